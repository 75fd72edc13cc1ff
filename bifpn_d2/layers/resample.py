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
from timm.layers import create_pool2d
from torch import nn

from .norm import LayerStyle

__all__ = ["ResampleToLevel", "max_pool_down"]


def max_pool_down(same_padding: bool = False) -> nn.Module:
    """3x3 max-pool, stride 2: ``(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))``.

    ``same_padding=True`` pads as TF "SAME" (timm's, the smaller half first), otherwise
    one pixel on every side as PyTorch does; both give the same output size.
    """
    if same_padding:
        return create_pool2d("max", kernel_size=3, stride=2, padding="same")
    return nn.MaxPool2d(3, 2, padding=1)


class ResampleToLevel(nn.Module):
    """One input edge of a pyramid node: ``(N, C_in, H_src, W_src) -> (N, C_out, H, W)``.

    A 1x1 conv + norm (no activation) projects channels when ``in_channels !=
    out_channels``; then the map is max-pooled down or interpolated up to the size given
    in :meth:`forward`.
    """

    # (conv, the norm applied to its output) attribute pairs, for folding (modeling/fold.py)
    conv_norm_pairs = (("conv", "norm"),)

    def __init__(
        self, in_channels: int, out_channels: int, level_step: int, style: LayerStyle = LayerStyle()
    ):
        """
        Args:
            in_channels, out_channels: channels before and after the edge.
            level_step: destination level minus source level (> 0 goes down in
                resolution, < 0 goes up, 0 stays).
            style: norm after the 1x1 projection (no projection, hence no norm, when
                channels match), the projection's bias, and the max-pool's padding.
        """
        super().__init__()
        self.level_step = level_step
        self.conv: Optional[nn.Module] = None
        self.norm: Optional[nn.Module] = None
        if in_channels != out_channels:
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=style.conv_bias)
            self.norm = style.make_norm(out_channels)
        self.pool = max_pool_down(style.same_padding)

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
