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
from ..layers.checks import check_choice, check_positive
from .pyramid_backbone import PyramidBackbone
from .pyramid_cell import DEFAULT_CELL, CellOptions, PyramidCell
from .pyramid_graph import build_graph, pyramid_levels

__all__ = ["BIFPN_STYLE", "BiFPN", "CONV_INITS", "DEFAULT_NUM_CELLS"]

CONV_INITS = ("xavier_uniform", "c2_xavier")


# The neck's layers when none are given: the defaults of MODEL.BIFPN.NORM and its siblings.
# LN (over the channels of each pixel): independent of the batch size, which Detectron2's
# R-CNN configs keep small, and, unlike GN, no statistics over a coarse level's few pixels;
# chosen on the neck study's dev split (docs/study.md).
BIFPN_STYLE = LayerStyle(norm="LN")
DEFAULT_NUM_CELLS = 3  # MODEL.BIFPN.NUM_CELLS


class BiFPN(PyramidBackbone):
    """Bottom-up network + top block + repeated BiFPN (or PANet) cells.

    Output ``p{l}`` for ``l`` in ``min_level..max_level`` has shape
    ``(N, out_channels, ceil(H / 2**l), ceil(W / 2**l))`` for an ``(N, 3, H, W)`` input of
    any size. With ``cell.channels_last`` (the default) the cells compute in channels-last
    memory layout and the outputs are channels-last tensors (same shapes and values;
    ``.contiguous()`` gives NCHW): depthwise convs, max-pools and resizes run several
    times faster that way on CPU, and convolutions that follow in a head keep it.

    The defaults build what ``MODEL.BACKBONE.NAME`` alone builds from a Detectron2 config
    (3 residual cells, GN) except the top block, which the caller chooses; EfficientDet's
    neck is ``cell=CellOptions(residual=False)``, ``style=LayerStyle("BN")`` (or SyncBN) and
    an :class:`EfficientDetTopBlock`.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        num_cells: int = DEFAULT_NUM_CELLS,
        top_block: Optional[nn.Module] = None,
        cell: CellOptions = DEFAULT_CELL,
        style: LayerStyle = BIFPN_STYLE,
        size_divisibility: Optional[int] = None,
        top_after_cells: Optional[bool] = None,
    ):
        """
        Args:
            bottom_up: a Detectron2 backbone (ResNet, :class:`EfficientNetBackbone`, ...).
            in_features: its outputs that feed the pyramid, finest first, at successive
                strides (e.g. ``["res3", "res4", "res5"]``).
            out_channels: width W of every pyramid level.
            num_cells: how many times the cell is repeated (depth D).
            top_block: makes the levels above the last input (Detectron2's protocol:
                ``in_feature`` names the map it reads, ``num_levels`` how many levels it
                adds), with ``out_channels`` channels. From a bottom-up output, before
                the cells, which then fuse its levels too: e.g. :class:`ConvP6P7TopBlock`
                from ``"res5"`` (RetinaNet's, learned) or :class:`EfficientDetTopBlock`
                (1x1 conv + max-pools). From an output of the cells (``"p5"``), after
                them: e.g. :class:`MaxPoolTopBlock` (Faster R-CNN's P6, as Detectron2's
                FPN makes it). None: the pyramid ends at the last input.
            cell: how the cells fuse, convolve and initialise (see :class:`CellOptions`).
            style: norms, conv biases and max-pool padding of every layer of the neck
                (see :class:`~bifpn_d2.layers.LayerStyle`).
            size_divisibility: see :class:`PyramidBackbone` (None: the last input stride).
            top_after_cells: join the top block's levels after the cells, so that no cell
                fuses them, even when it reads a bottom-up map (True: e.g. P6/P7 from
                ``"res5"`` exactly as the FPN makes them). None: after the cells only when
                it reads a cell output. False with a top block reading a cell output is
                an error.
        """
        check_positive("num_cells", num_cells)
        check_choice("conv_init", cell.conv_init, CONV_INITS)
        levels = pyramid_levels(bottom_up, in_features)
        in_shapes = bottom_up.output_shape()
        num_extra = top_block.num_levels if top_block is not None else 0  # levels made by the top block
        # A top block reading a bottom-up map runs before the cells and its levels are fused
        # in them, unless top_after_cells; one reading a cell output (p5) runs after them,
        # on that output.
        reads_cell_output = top_block is not None and top_block.in_feature not in in_shapes
        if top_after_cells is False and reads_cell_output:
            raise ValueError(f"the top block reads {top_block.in_feature!r}, a cell output: it can only run "
                             "after the cells (top_after_cells=False asks for before)")
        after_cells = top_block is not None and (reads_cell_output or bool(top_after_cells))
        cell_max_level = levels[-1] + (0 if after_cells else num_extra)
        if cell_max_level - levels[0] + 1 < 3:
            if top_block is None:
                hint = " (give a top_block to add levels above the inputs)"
            elif after_cells:
                hint = f" (the top block reads {top_block.in_feature!r}, after the cells)"
            else:
                hint = ""
            raise ValueError(f"BiFPN cells need at least 3 levels, got P{levels[0]}-P{cell_max_level}{hint}")
        super().__init__(bottom_up, in_features, out_channels, num_extra, size_divisibility)
        in_channels = [in_shapes[f].channels for f in in_features]
        cell_outputs = [f"p{level}" for level in range(levels[0], levels[-1] + 1)]
        self.check_top_block(top_block, list(in_shapes) + cell_outputs)
        self.top_block = top_block
        self.top_after_cells = after_cells
        # The index of the cell output the top block reads (-1: it reads a bottom-up map).
        self._top_source = cell_outputs.index(top_block.in_feature) if reads_cell_output else -1
        if not after_cells:
            in_channels += [out_channels] * num_extra

        nodes = build_graph(cell.graph, self.min_level, cell_max_level)
        self.cells = nn.ModuleList()
        for _ in range(num_cells):
            self.cells.append(PyramidCell(nodes, self.min_level, in_channels, out_channels, cell, style))
            in_channels = [out_channels] * len(in_channels)
        self._init_weights(cell.conv_init)
        self.channels_last = cell.channels_last

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each cell's activations in the backward pass instead of keeping them
        (activation checkpointing: less memory in training, more time; outputs and
        gradients unchanged). ``MODEL.BIFPN.CHECKPOINT_ACTIVATIONS`` in a config."""
        for cell in self.cells:
            cell.set_grad_checkpointing(enable)

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
        if self.top_block is not None and not self.top_after_cells:
            features = features + self.top_block(bottom_up_features[self.top_block.in_feature])
        if self.channels_last:
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        for cell in self.cells:
            features = cell(features)
        if self.top_block is not None and self.top_after_cells:
            source = features[self._top_source] if self._top_source >= 0 else (
                bottom_up_features[self.top_block.in_feature])
            features = features + self.top_block(source)
        return self.named_outputs(features)
