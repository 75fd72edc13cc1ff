"""3x3 convolutions: the one applied after each fusion (separable or plain, then norm), and
the bare separable conv that EfficientDet's heads share across levels."""
from typing import Optional

import torch
from torch import nn

from .norm import LayerStyle

__all__ = ["SeparableConv", "SeparableConvNorm", "conv3x3"]


class SeparableConvNorm(nn.Module):
    """``(N, C, H, W) -> (N, C, H, W)``: depthwise 3x3 (no bias) + pointwise 1x1, then norm.

    ``conv`` is the pointwise 1x1 after ``depthwise``, or with ``separable=False`` a dense
    3x3 conv alone (``depthwise`` is then None). A 3x3 stride-1 conv with one pixel of
    padding is identical to TF "SAME", so no padding option is needed here. ``conv`` has a
    bias when the style asks for one (no norm, or ``bias_before_norm``).
    """

    # (conv, the norm applied to its output) attribute pairs, for folding (modeling/fold.py)
    conv_norm_pairs = (("conv", "norm"),)

    def __init__(self, channels: int, separable: bool = True, style: LayerStyle = LayerStyle()):
        super().__init__()
        self.norm: Optional[nn.Module] = style.make_norm(channels)
        if separable:
            self.depthwise: Optional[nn.Module] = nn.Conv2d(
                channels, channels, 3, padding=1, groups=channels, bias=False
            )
            self.conv = nn.Conv2d(channels, channels, 1, bias=style.conv_bias)
        else:
            self.depthwise = None
            self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=style.conv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise is not None:
            x = self.depthwise(x)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


class SeparableConv(nn.Module):
    """``(N, C_in, H, W) -> (N, C_out, H, W)``: depthwise 3x3 (no bias), then pointwise 1x1.

    No norm inside, so that one conv can serve several pyramid levels, each with its own
    norm after it (EfficientDet's heads).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def conv3x3(in_channels: int, out_channels: int, separable: bool, bias: bool) -> nn.Module:
    """A stride-1 3x3 conv that keeps the size: :class:`SeparableConv` or a dense ``nn.Conv2d``."""
    if separable:
        return SeparableConv(in_channels, out_channels, bias)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
