"""The 3x3 convolution applied after each fusion: separable (default) or plain, then norm."""
from typing import Optional

import torch
from torch import nn

from .norm import LayerStyle

__all__ = ["SeparableConvNorm"]


class SeparableConvNorm(nn.Module):
    """``(N, C, H, W) -> (N, C, H, W)``: depthwise 3x3 (no bias) + pointwise 1x1, then norm.

    ``conv`` is the pointwise 1x1 after ``depthwise``, or with ``separable=False`` a dense
    3x3 conv alone (``depthwise`` is then None). A 3x3 stride-1 conv with one pixel of
    padding is identical to TF "SAME", so no padding option is needed here. ``conv`` has a
    bias when the style asks for one (no norm, or ``bias_before_norm``).
    """

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
