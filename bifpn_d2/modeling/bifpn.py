"""BiFPN (EfficientDet, Tan et al. 2020) as a Detectron2 backbone.

A feature map travels: bottom-up network -> selected levels ``in_features`` -> top block
(the extra levels above them) -> ``num_cells`` repeated pyramid cells -> ``p{level}``
outputs. The cell is a node spec from :mod:`pyramid_graph` (BiFPN or PANet), so any
contiguous range of levels works.
"""
from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.modeling.backbone import Backbone
from torch import nn

from ..layers import LayerStyle
from .pyramid_backbone import PyramidBackbone
from .pyramid_cell import PyramidCell
from .pyramid_graph import build_graph, pyramid_levels
from .top_blocks import EfficientDetTopBlock

__all__ = ["BiFPN", "CONV_INITS"]

CONV_INITS = ("xavier_uniform", "c2_xavier")


class BiFPN(PyramidBackbone):
    """Bottom-up network + top block + repeated BiFPN (or PANet) cells.

    Output ``p{l}`` for ``l`` in ``min_level..max_level`` has shape
    ``(N, out_channels, ceil(H / 2**l), ceil(W / 2**l))`` for an ``(N, 3, H, W)`` input of
    any size. With ``channels_last`` (the default) the cells compute in channels-last
    memory layout and the outputs are channels-last tensors (same shapes and values;
    ``.contiguous()`` gives NCHW): depthwise convs, max-pools and resizes run several
    times faster that way on CPU, and convolutions that follow in a head keep it.
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
        size_divisibility: Optional[int] = None,
        conv_init: str = "xavier_uniform",
        channels_last: bool = True,
        residual: bool = False,
        residual_scale: float = 0.0,
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
            fusion, fusion_eps, activation, separable_conv: see :class:`PyramidCell`.
            norm, norm_eps, norm_momentum, same_padding, bias_before_norm: the
                :class:`~bifpn_d2.layers.LayerStyle` of every layer of the neck.
            size_divisibility: see :class:`PyramidBackbone` (None: the last input stride).
            conv_init: initialisation of the cells' convs: ``"xavier_uniform"`` (Glorot
                uniform, EfficientDet's) or ``"c2_xavier"`` (uniform with variance
                1 / fan-in, Detectron2's FPN); biases are zero either way.
            channels_last: compute the cells in channels-last memory layout (see above).
            residual: every cell whose inputs all have ``out_channels`` channels (all but
                the first, unless the inputs already have the width) adds its inputs to
                its outputs and starts as the identity (its output norms' scales are
                zero), so that depth does not slow training down (see :class:`PyramidCell`).
            residual_scale: the initial scale of those norms (0: each residual cell starts
                as the identity; see :class:`PyramidCell`).
        """
        if num_cells < 1:
            raise ValueError(f"num_cells={num_cells} must be >= 1")
        if conv_init not in CONV_INITS:
            raise ValueError(f"conv_init {conv_init!r} is not one of {list(CONV_INITS)}")
        levels = pyramid_levels(bottom_up, in_features)
        if top_block is not None:
            implied = levels[-1] + top_block.num_levels
            if max_level is not None and max_level != implied:
                raise ValueError(
                    f"max_level={max_level} disagrees with the top block, which ends at P{implied}"
                )
            max_level = implied
        if max_level is None:
            raise ValueError("give max_level or a top_block")
        if max_level < levels[-1]:
            raise ValueError(f"max_level={max_level} is below the last input level {levels[-1]}")
        if max_level - levels[0] + 1 < 3:
            raise ValueError(f"BiFPN needs at least 3 levels, got P{levels[0]}-P{max_level}")
        num_extra = max_level - levels[-1]  # levels made by the top block
        super().__init__(bottom_up, in_features, out_channels, num_extra, size_divisibility)
        style = LayerStyle(norm, norm_eps, norm_momentum, same_padding, bias_before_norm)
        in_shapes = bottom_up.output_shape()
        in_channels = [in_shapes[f].channels for f in in_features]
        if top_block is None and num_extra > 0:
            top_block = EfficientDetTopBlock(in_channels[-1], out_channels, num_extra, in_features[-1], style)
        self.check_top_block(top_block, list(in_shapes))
        self.top_block = top_block
        in_channels += [out_channels] * num_extra

        nodes = build_graph(graph, self.min_level, self.max_level)
        self.cells = nn.ModuleList()
        for _ in range(num_cells):
            self.cells.append(
                PyramidCell(nodes, self.min_level, in_channels, out_channels, fusion, fusion_eps, activation,
                            separable_conv, style, residual, residual_scale)
            )
            in_channels = [out_channels] * len(in_channels)
        self._init_weights(conv_init)
        self.channels_last = channels_last

    def _init_weights(self, conv_init: str) -> None:
        """Convs of the cells per ``conv_init``, with zero bias; norms and fusion weights
        keep their initialisation (1/0 and 1; residual cells zero their output norms'
        scales). The top block initialises itself."""
        for m in self.cells.modules():
            if isinstance(m, nn.Conv2d):
                if conv_init == "xavier_uniform":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    weight_init.c2_xavier_fill(m)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: ``(N, 3, H, W)`` images.
        Returns:
            ``{"p3": (N, W, H/8, W/8), ...}``, one map per output level.
        """
        return self.pyramid(self.bottom_up(x))

    def pyramid(self, bottom_up_features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The neck's work on the bottom-up network's outputs (top block, then the cells):
        ``forward`` without the bottom-up pass, e.g. to time the neck alone."""
        features: List[torch.Tensor] = [bottom_up_features[name] for name in self.in_features]
        if self.top_block is not None:
            features = features + self.top_block(bottom_up_features[self.top_block.in_feature])
        if self.channels_last:
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        for cell in self.cells:
            features = cell(features)
        return self.named_outputs(features)
