"""Top blocks: the extra coarse levels (P6, P7, ...) above the last bottom-up level.

Each block follows Detectron2's protocol: ``in_feature`` names the map it starts from
(a bottom-up feature such as ``"res5"`` or a pyramid output such as ``"p5"``),
``num_levels`` is how many levels it adds, and ``forward(x)`` returns them, finest first.

=====================  ==========================================================  =========
``TOP_BLOCKS`` key     levels                                                      used by
=====================  ==========================================================  =========
``maxpool``            P6 = max-pool(P5, kernel 1, stride 2)                       Faster R-CNN
``p6p7_c5``            P6 = conv3x3/2(C5), P7 = conv3x3/2(relu(P6))                RetinaNet
``p6p7_p5``            the same from P5                                            FCOS
``efficientdet``       P6 = max-pool(norm(conv1x1(C5))), P7 = max-pool(P6), ...    EfficientDet
=====================  ==========================================================  =========
"""
from typing import List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import Backbone
from torch import nn

from ..layers import LayerStyle, ResampleToLevel
from ..layers.checks import check_choice
from .pyramid_graph import pyramid_levels

__all__ = [
    "TOP_BLOCKS", "MaxPoolTopBlock", "ConvP6P7TopBlock", "EfficientDetTopBlock",
    "make_top_block",
]

TOP_BLOCKS = ("maxpool", "p6p7_c5", "p6p7_p5", "efficientdet")


class MaxPoolTopBlock(nn.Module):
    """P6 = subsampled P5 (Faster R-CNN's RPN): ``(N, C, H, W) -> [(N, C, ceil(H/2), ceil(W/2))]``."""

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.num_levels = 1
        self.in_feature = in_feature

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class ConvP6P7TopBlock(nn.Module):
    """P6 (and P7) by strided 3x3 convs (RetinaNet from C5, FCOS from P5).

    Parameter names (``p6``, ``p7``) equal Detectron2's ``LastLevelP6P7``, so its
    checkpoints load. ``(N, in_channels, H, W) -> [(N, C, H/2, W/2), (N, C, H/4, W/4)]``
    (sizes rounded up); with ``num_levels=1`` only the first (an R-CNN pyramid's P6).
    """

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5", num_levels: int = 2):
        super().__init__()
        if num_levels not in (1, 2):
            raise ValueError(f"ConvP6P7TopBlock makes 1 or 2 levels (P6, P7), got num_levels={num_levels}")
        self.num_levels = num_levels
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7: Optional[nn.Module] = None
        if num_levels == 2:
            self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            if module is not None:
                weight_init.c2_xavier_fill(module)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(x)
        if self.p7 is None:
            return [p6]
        return [p6, self.p7(F.relu(p6))]


class EfficientDetTopBlock(nn.Module):
    """EfficientDet's extra levels: a 1x1 conv + norm (only when channels differ) and a
    3x3 stride-2 max-pool for the first, a max-pool for each further one.

    ``(N, in_channels, H, W) -> [(N, C, ceil(H/2), ceil(W/2)), (N, C, ceil(H/4), ...), ...]``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_levels: int,
        in_feature: str,
        style: LayerStyle = LayerStyle(),
    ):
        """
        Args:
            in_channels, out_channels: channels of the map it starts from, and of its levels.
            num_levels: how many levels it adds.
            in_feature: the name of the map it starts from (e.g. ``"res5"``).
            style: the norm after the 1x1 conv, its bias, and the max-pools' padding.
        """
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"EfficientDetTopBlock needs num_levels >= 1, got {num_levels}")
        self.num_levels = num_levels
        self.in_feature = in_feature
        self.downsample = nn.ModuleList(
            ResampleToLevel(in_channels if i == 0 else out_channels, out_channels, 1, style)
            for i in range(num_levels)
        )
        for m in self.modules():  # EfficientDet's init: Glorot-uniform convs, zero bias
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outputs: List[torch.Tensor] = []
        for step in self.downsample:
            x = step(x, [(x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2])
            outputs.append(x)
        return outputs


def make_top_block(name: str, bottom_up: Backbone, in_features: Sequence[str], out_channels: int,
                   num_levels: int, style: LayerStyle) -> nn.Module:
    """The top block ``name`` (one of :data:`TOP_BLOCKS`) adding ``num_levels`` levels of
    ``out_channels`` channels over a pyramid of ``in_features`` of ``bottom_up``: from its
    last input (``c5``: ``p6p7_c5``, ``efficientdet``) or its last output (``p5``:
    ``maxpool``, ``p6p7_p5``). ``style``: the norm of the ``efficientdet`` block."""
    check_choice("top_block", name, TOP_BLOCKS)
    last_input = in_features[-1]
    last_channels = bottom_up.output_shape()[last_input].channels
    last_output = f"p{pyramid_levels(bottom_up, in_features)[-1]}"
    if name == "maxpool":
        return MaxPoolTopBlock(last_output)
    if name == "p6p7_c5":
        return ConvP6P7TopBlock(last_channels, out_channels, last_input, num_levels)
    if name == "p6p7_p5":
        return ConvP6P7TopBlock(out_channels, out_channels, last_output, num_levels)
    return EfficientDetTopBlock(last_channels, out_channels, num_levels, last_input, style)
