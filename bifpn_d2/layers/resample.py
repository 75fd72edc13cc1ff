"""Bring a feature map to another pyramid level: channel projection, then resize.

Resizing always targets the *exact* size of the destination level, taken from a
feature map of that level at run time, so any input size works (no fixed scale factor,
nothing baked in at construction):

- down one level: 3x3 max-pool with stride 2 (EfficientDet), repeated per level;
  if a bottom-up network rounds sizes differently than ``ceil(n / 2)``, an adaptive
  max-pool to the target size finishes the job;
- up: nearest-neighbour interpolation to the target size.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .norm import make_norm
from .same_padding import pad_same

__all__ = ["MaxPoolDown", "ResampleToLevel"]


class MaxPoolDown(nn.Module):
    """3x3 max-pool, stride 2: ``(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))``.

    ``same_padding=True`` pads as TF "SAME" (the smaller half first), otherwise one pixel
    on every side as PyTorch does; both give the same output size.
    """

    def __init__(self, same_padding: bool = False):
        super().__init__()
        self.same_padding = same_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_padding:
            return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        return F.max_pool2d(x, 3, 2, padding=1)


class ResampleToLevel(nn.Module):
    """One input edge of a pyramid node: ``(N, C_in, H_src, W_src) -> (N, C_out, H, W)``.

    A 1x1 conv + norm (no activation) projects channels when ``in_channels !=
    out_channels``; then the map is max-pooled down or interpolated up to the size given
    in :meth:`forward`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        level_step: int,
        norm: str = "BN",
        norm_eps: float = 1e-3,
        norm_momentum: float = 0.01,
        same_padding: bool = False,
        bias_before_norm: bool = False,
    ):
        """
        Args:
            in_channels, out_channels: channels before and after the edge.
            level_step: destination level minus source level (> 0 goes down in
                resolution, < 0 goes up, 0 stays).
            norm, norm_eps, norm_momentum: normalization after the 1x1 projection (see
                :func:`make_norm`); no projection, hence no norm, when channels match.
            same_padding: TF "SAME" padding for the max-pools.
            bias_before_norm: give the projection a bias even when a norm follows (the
                redundant bias of TF-trained EfficientDet checkpoints).
        """
        super().__init__()
        self.level_step = level_step
        self.conv: Optional[nn.Module] = None
        self.norm: Optional[nn.Module] = None
        if in_channels != out_channels:
            norm_layer = make_norm(norm, out_channels, norm_eps, norm_momentum)
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=norm_layer is None or bias_before_norm)
            self.norm = norm_layer
        self.pool = MaxPoolDown(same_padding)

    def forward(self, x: torch.Tensor, size: List[int]) -> torch.Tensor:
        """``size``: ``[H, W]`` of the destination level."""
        if self.conv is not None:
            x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.level_step > 0:
            for _ in range(self.level_step):
                x = self.pool(x)
            if x.shape[-2] != size[0] or x.shape[-1] != size[1]:
                x = F.adaptive_max_pool2d(x, size)
        elif self.level_step < 0:
            x = F.interpolate(x, size=size, mode="nearest")
        return x
