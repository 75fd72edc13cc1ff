"""BiFPN (EfficientDet, Tan et al. 2020) as a Detectron2 backbone.

A feature map travels: bottom-up network -> selected levels ``in_features`` -> top block
(the extra levels above them) -> ``num_cells`` repeated pyramid cells -> ``p{level}``
outputs. The cell is a node spec from :mod:`pyramid_graph` (BiFPN or PANet), so any
contiguous range of levels works.
"""
import math
from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.modeling.backbone import Backbone
from torch import nn

from .pyramid_cell import PyramidCell
from .pyramid_graph import build_graph
from .top_blocks import EfficientDetTopBlock

__all__ = ["BiFPN", "CONV_INITS", "pyramid_levels"]

CONV_INITS = ("xavier_uniform", "c2_xavier")


def pyramid_levels(bottom_up: Backbone, in_features: List[str]) -> List[int]:
    """The level (log2 stride) of each of ``in_features``; checks that they exist and
    are successive powers of two, lowest first."""
    shapes = bottom_up.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if missing or not in_features:
        raise ValueError(
            f"{missing} not produced by the bottom-up network, which produces {list(shapes)}"
            if missing
            else f"no features given; the bottom-up network produces {list(shapes)}"
        )
    strides = [shapes[f].stride for f in in_features]
    levels = [int(round(math.log2(s))) for s in strides]
    if any(2**level != s for level, s in zip(levels, strides)) or any(
        b != a + 1 for a, b in zip(levels, levels[1:])
    ):
        raise ValueError(
            f"strides {strides}: the features must be at successive "
            "powers of two in increasing order (e.g. 8, 16, 32)"
        )
    return levels


class BiFPN(Backbone):
    """Bottom-up network + top block + repeated BiFPN (or PANet) cells.

    Output ``p{l}`` for ``l`` in ``min_level..max_level`` has shape
    ``(N, out_channels, ceil(H / 2**l), ceil(W / 2**l))`` for an ``(N, 3, H, W)`` input of
    any size.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        num_cells: int,
        max_level: Optional[int] = None,
        top_block: Optional[nn.Module] = None,
        graph: str = "bifpn",
        fusion: str = "fast_normalized",
        fusion_eps: float = 1e-4,
        activation: str = "swish",
        separable_conv: bool = True,
        norm: str = "BN",
        norm_eps: float = 1e-3,
        norm_momentum: float = 0.01,
        same_padding: bool = False,
        bias_before_norm: bool = False,
        size_divisibility: int = 0,
        conv_init: str = "xavier_uniform",
    ):
        """
        Args:
            bottom_up: a Detectron2 backbone (ResNet, :class:`EfficientNetBackbone`, ...).
            in_features: its outputs that feed the pyramid, finest first, at successive
                strides (e.g. ``["res3", "res4", "res5"]``).
            out_channels: width W of every pyramid level.
            num_cells: how many times the cell is repeated (depth D).
            max_level: the coarsest output level. Without ``top_block``, the levels above
                the last input are made from it by an :class:`EfficientDetTopBlock`.
            top_block: makes the levels above the last input instead (Detectron2's protocol:
                ``in_feature`` names a bottom-up output, ``num_levels`` how many levels it
                adds, e.g. :class:`ConvP6P7TopBlock` from ``"res5"``); it must output
                ``out_channels`` channels. ``max_level``, if given, must agree with it.
            graph: ``"bifpn"`` or ``"panet"`` (see :mod:`pyramid_graph`).
            fusion, fusion_eps, activation, separable_conv, norm, norm_eps, norm_momentum,
                same_padding, bias_before_norm: see :class:`PyramidCell`.
            size_divisibility: what Detectron2 pads input images to a multiple of. The
                BiFPN needs no padding (0); heads that upsample by fixed factors and add
                levels together, such as ``SemSegFPNHead``, need ``2**max_level`` of what
                they read (32 for P2-P5).
            conv_init: initialisation of the cells' convs: ``"xavier_uniform"`` (Glorot
                uniform, EfficientDet's) or ``"c2_xavier"`` (uniform with variance
                1 / fan-in, Detectron2's FPN); biases are zero either way.
        """
        super().__init__()
        if out_channels < 1 or num_cells < 1:
            raise ValueError(f"out_channels={out_channels} and num_cells={num_cells} must be >= 1")
        if size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
        self._size_divisibility = size_divisibility
        if conv_init not in CONV_INITS:
            raise ValueError(f"conv_init {conv_init!r} is not one of {list(CONV_INITS)}")
        levels = pyramid_levels(bottom_up, in_features)
        min_level, last_input_level = levels[0], levels[-1]
        if top_block is not None:
            implied = last_input_level + top_block.num_levels
            if max_level is not None and max_level != implied:
                raise ValueError(f"max_level={max_level} disagrees with the top block, which ends at P{implied}")
            max_level = implied
        if max_level is None:
            raise ValueError("give max_level or a top_block")
        if max_level < last_input_level:
            raise ValueError(f"max_level={max_level} is below the last input level {last_input_level}")
        if max_level - min_level + 1 < 3:
            raise ValueError(f"BiFPN needs at least 3 levels, got P{min_level}-P{max_level}")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        in_shapes = bottom_up.output_shape()
        in_channels = [in_shapes[f].channels for f in in_features]

        norm_args = dict(norm=norm, norm_eps=norm_eps, norm_momentum=norm_momentum,
                         same_padding=same_padding, bias_before_norm=bias_before_norm)
        num_extra = max_level - last_input_level
        if top_block is None and num_extra > 0:
            top_block = EfficientDetTopBlock(
                in_channels[-1], out_channels, num_extra, in_features[-1], **norm_args
            )
        if top_block is not None and top_block.in_feature not in in_shapes:
            raise ValueError(
                f"the top block reads {top_block.in_feature!r}, which the bottom-up network does not "
                f"produce ({list(in_shapes)})"
            )
        self.top_block = top_block
        in_channels += [out_channels] * num_extra

        nodes = build_graph(graph, min_level, max_level)
        self.cells = nn.ModuleList()
        for _ in range(num_cells):
            self.cells.append(
                PyramidCell(nodes, min_level, in_channels, out_channels, fusion, fusion_eps,
                            activation, separable_conv, **norm_args)
            )
            in_channels = [out_channels] * len(in_channels)
        self._init_weights(conv_init)

        self.min_level, self.max_level = min_level, max_level
        self._out_features = [f"p{level}" for level in range(min_level, max_level + 1)]
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._out_feature_strides = {
            f"p{level}": 2**level for level in range(min_level, max_level + 1)
        }

    def _init_weights(self, conv_init: str) -> None:
        """Convs of the cells per ``conv_init``, with zero bias; norms and fusion weights
        keep their 1/0 and 1 initialisation. The top block initialises itself."""
        for m in self.cells.modules():
            if isinstance(m, nn.Conv2d):
                if conv_init == "xavier_uniform":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    weight_init.c2_xavier_fill(m)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def size_divisibility(self) -> int:
        """0 by default: every level is resized to its exact size, so no padding is needed."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: ``(N, 3, H, W)`` images.
        Returns:
            ``{"p3": (N, W, H/8, W/8), ...}``, one map per output level.
        """
        bottom_up_features = self.bottom_up(x)
        features: List[torch.Tensor] = [bottom_up_features[name] for name in self.in_features]
        on_cpu = features[0].device.type == "cpu"
        if on_cpu:
            # On CPU the depthwise convs, max-pools and resizes of the cells run several
            # times faster in channels-last layout (oneDNN kernels); same values up to rounding.
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        if self.top_block is not None:
            source = bottom_up_features[self.top_block.in_feature]
            if on_cpu:
                source = source.contiguous(memory_format=torch.channels_last)
            features = features + self.top_block(source)
        for cell in self.cells:
            features = cell(features)
        outputs: Dict[str, torch.Tensor] = {}
        for name, feature in zip(self._out_features, features):
            outputs[name] = feature
        return outputs
