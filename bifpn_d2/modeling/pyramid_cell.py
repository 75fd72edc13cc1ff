"""Run one pyramid cell (a :mod:`pyramid_graph` spec) over a list of feature maps."""
from collections.abc import Sequence
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from ..layers import LayerStyle, ResampleToLevel, SeparableConvNorm, WeightedFusion, make_activation
from ..layers.activation_checkpointing import ActivationCheckpointing
from ..layers.checks import OptionError
from .pyramid_graph import PyramidNode, output_node_ids

__all__ = ["DEFAULT_CELL", "CellOptions", "FusionNode", "PyramidCell"]


@dataclass(frozen=True)
class CellOptions:
    """How every cell of a BiFPN is made: one value passed from the neck to its cells and
    nodes. The defaults are those of the ``MODEL.BIFPN`` config keys (the neck study's
    recipe); EfficientDet's cells are ``CellOptions(residual=False)``.

    Attributes:
        graph: the node spec of a cell, ``"bifpn"``, ``"panet"`` or ``"qufpn"`` (see
            :mod:`pyramid_graph`).
        fusion, fusion_eps: how each node fuses its inputs (see :class:`WeightedFusion`).
        fusion_input_weight: the initial fusion weight of each node's edge from the cell's
            input at the node's level, relative to its other edges (> 0; 1: the equal
            split, EfficientDet's). A learnable fusion only.
        activation: after each fusion, before the conv (see :func:`make_activation`).
        separable_conv: depthwise-separable (True) or dense 3x3 conv after each fusion.
        dense_levels: levels whose nodes take a dense 3x3 conv even when
            ``separable_conv`` (e.g. ``(5,)``: the coarse levels, where a dense conv costs
            little); every level must lie in the cell.
        residual: each cell whose inputs all have the neck's width adds them to its
            outputs at their levels (an identity path through the cell); a cell whose
            inputs have other widths (the first, over a ResNet) stays plain.
        residual_scale: the initial scale of the norm that ends each output node of a
            residual cell: 0 starts the cell as the identity; > 0 as
            ``input + residual_scale * normalised change``.
        conv_init: initialisation of the cells' convs, ``"xavier_uniform"`` (Glorot
            uniform, EfficientDet's) or ``"c2_xavier"`` (uniform with variance 1 / fan-in,
            Detectron2's FPN); biases are zero either way.
        channels_last: the neck computes its cells in channels-last memory layout (see
            :class:`BiFPN`).

    The modules that use a field check it (an :class:`OptionError` naming the field).
    """

    graph: str = "bifpn"
    fusion: str = "fast_normalized"
    fusion_eps: float = 1e-4
    fusion_input_weight: float = 1.0
    activation: str = "swish"
    separable_conv: bool = True
    dense_levels: Tuple[int, ...] = ()
    residual: bool = True
    residual_scale: float = 0.0
    conv_init: str = "xavier_uniform"
    channels_last: bool = True


DEFAULT_CELL = CellOptions()


class FusionNode(nn.Module):
    """One node: resample each input edge to this level, fuse, activate, conv, norm.

    ``edges[k]`` resamples input node ``input_ids[k]``; the target size is the size of
    the cell's input at this level (``level_index``), read at run time.
    """

    def __init__(
        self,
        input_ids: Sequence[int],
        input_channels: Sequence[int],
        level_steps: Sequence[int],
        level_index: int,
        out_channels: int,
        options: CellOptions = DEFAULT_CELL,
        separable: bool = True,
        style: LayerStyle = LayerStyle(),
    ):
        """
        Args:
            input_ids: the node ids this node fuses.
            input_channels, level_steps: each input's channels, and this node's level
                minus the input's level.
            level_index: this node's level minus the cell's lowest level.
            out_channels: channels of the node.
            options: its fusion, activation and conv (see :class:`CellOptions`; whether
                the conv is separable is ``separable``'s to say).
            separable: a depthwise-separable conv after the fusion (False: a dense 3x3).
            style: norms, conv biases and max-pool padding (see :class:`LayerStyle`).
        """
        super().__init__()
        self.input_ids: List[int] = list(input_ids)
        self.level_index = level_index
        self.edges = nn.ModuleList(
            ResampleToLevel(in_ch, out_channels, step, style)
            for in_ch, step in zip(input_channels, level_steps)
        )
        # the cell's input at this node's level is node level_index
        weight = options.fusion_input_weight
        initial = None if weight == 1.0 else [weight if i == level_index else 1.0 for i in self.input_ids]
        self.fusion = WeightedFusion(
            len(self.input_ids), options.fusion, options.fusion_eps, out_channels, initial=initial
        )
        self.act = make_activation(options.activation)
        self.conv = SeparableConvNorm(out_channels, separable, style)

    def freeze_for_inference_(self) -> None:
        """Replace a learnable fusion by its frozen stand-in (see
        :meth:`WeightedFusion.frozen`), whose output is a new tensor that nothing else
        references, so that the activation after it may then run in place."""
        if isinstance(self.fusion, WeightedFusion):
            self.fusion = self.fusion.frozen()
        if not isinstance(self.fusion, WeightedFusion) and isinstance(self.act, (nn.SiLU, nn.ReLU, nn.ReLU6)):
            self.act.inplace = True

    def forward(self, nodes: List[torch.Tensor], sizes: List[List[int]]) -> torch.Tensor:
        """
        Args:
            nodes: every node computed so far in this cell, inputs first.
            sizes: ``[H, W]`` of each pyramid level, lowest level first.
        Returns:
            ``(N, out_channels, H, W)`` at this node's level.
        """
        size = sizes[self.level_index]
        inputs: List[torch.Tensor] = []
        for k, edge in enumerate(self.edges):
            inputs.append(edge(nodes[self.input_ids[k]], size))
        return self.conv(self.act(self.fusion(inputs)))


class PyramidCell(ActivationCheckpointing, nn.Module):
    """A cell over levels ``min_level..max_level``: ``L`` maps in, ``L`` maps out (plus
    the inputs, for a residual cell).

    Input ``i`` has shape ``(N, in_channels[i], H_i, W_i)`` at stride ``2**(min_level+i)``;
    output ``i`` has shape ``(N, out_channels, H_i, W_i)``. The caller's list is not
    modified. ``set_grad_checkpointing(True)`` recomputes the cell's activations in the
    backward pass instead of keeping them (see :class:`ActivationCheckpointing`).
    """

    def __init__(
        self,
        nodes: Sequence[PyramidNode],
        min_level: int,
        in_channels: Sequence[int],
        out_channels: int,
        options: CellOptions = DEFAULT_CELL,
        style: LayerStyle = LayerStyle(),
    ):
        """
        Args:
            nodes: the spec, e.g. :func:`bifpn_nodes` ``(min_level, max_level)``.
            min_level: level of the first input.
            in_channels: channels of each input level; an edge whose source has other
                than ``out_channels`` channels gets its own 1x1 conv + norm.
            out_channels: channels of every node.
            options: fusion, activation, conv and residual path (see :class:`CellOptions`;
                ``graph``, ``conv_init`` and ``channels_last`` are the neck's to apply).
            style: norms, conv biases and max-pool padding (see :class:`LayerStyle`).
        """
        super().__init__()
        num_levels = len(in_channels)
        max_level = min_level + num_levels - 1
        node_levels = [min_level + i for i in range(num_levels)]
        node_channels = list(in_channels)
        outside = [level for level in options.dense_levels
                   if not isinstance(level, int) or not min_level <= level <= max_level]
        if outside:
            raise OptionError("dense_levels", list(options.dense_levels),
                              f"{outside} are not levels of the cell, P{min_level}-P{max_level}: "
                              f"allowed values: {list(range(min_level, max_level + 1))}")
        weight = options.fusion_input_weight
        if not weight > 0 or (weight != 1.0 and options.fusion in ("sum", "avg")):
            raise OptionError("fusion_input_weight", weight,
                              "it must be > 0, and 1 for a fusion that learns no weights (sum, avg)")
        self.nodes = nn.ModuleList()
        for node in nodes:
            if not min_level <= node.level <= max_level:
                raise ValueError(f"node {node} lies outside levels P{min_level}-P{max_level}")
            self.nodes.append(
                FusionNode(
                    input_ids=node.inputs,
                    input_channels=[node_channels[i] for i in node.inputs],
                    level_steps=[node.level - node_levels[i] for i in node.inputs],
                    level_index=node.level - min_level,
                    out_channels=out_channels,
                    options=options,
                    separable=options.separable_conv and node.level not in options.dense_levels,
                    style=style,
                )
            )
            node_levels.append(node.level)
            node_channels.append(out_channels)
        self.output_ids: List[int] = output_node_ids(list(nodes), min_level, max_level)
        unfused = [min_level + k for k, i in enumerate(self.output_ids) if node_channels[i] != out_channels]
        if unfused:
            raise ValueError(f"levels {unfused} have no fused node to bring them to {out_channels} channels")
        if options.residual_scale < 0:
            raise OptionError("residual_scale", options.residual_scale, "it must be >= 0")
        self.residual = options.residual and all(c == out_channels for c in in_channels)
        if self.residual:
            self._scale_output_norms(options.residual_scale)
        self.set_grad_checkpointing(False)

    def _scale_output_norms(self, scale: float) -> None:
        """Set the scale of the norm that ends each output node to ``scale``: with 0 the
        residual cell computes the identity at initialisation (as ResNets zero the last
        norm of each block) and learns its change from there. Norms without a scale are
        left."""
        num_inputs = len(self.output_ids)
        for node_id in self.output_ids:
            norm = self.nodes[node_id - num_inputs].conv.norm
            if norm is not None and getattr(norm, "weight", None) is not None:
                nn.init.constant_(norm.weight, scale)

    def _forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        sizes: List[List[int]] = [[f.shape[-2], f.shape[-1]] for f in features]
        nodes: List[torch.Tensor] = list(features)
        for node in self.nodes:
            nodes.append(node(nodes, sizes))
        outputs = [nodes[i] for i in self.output_ids]
        if self.residual:
            outputs = [f + o for f, o in zip(features, outputs)]
        return outputs
