"""Run one pyramid cell (a :mod:`pyramid_graph` spec) over a list of feature maps."""
from collections.abc import Sequence
from typing import List

import torch
from torch import nn

from ..layers import LayerStyle, ResampleToLevel, SeparableConvNorm, WeightedFusion, make_activation
from .pyramid_graph import PyramidNode, output_node_ids

__all__ = ["PyramidCell", "FusionNode"]


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
        fusion: str = "fast_normalized",
        fusion_eps: float = 1e-4,
        activation: str = "swish",
        separable_conv: bool = True,
        style: LayerStyle = LayerStyle(),
    ):
        """
        Args:
            input_ids: the node ids this node fuses.
            input_channels, level_steps: each input's channels, and this node's level
                minus the input's level.
            level_index: this node's level minus the cell's lowest level.
            out_channels, fusion, fusion_eps, activation, separable_conv, style: see
                :class:`PyramidCell`.
        """
        super().__init__()
        self.input_ids: List[int] = list(input_ids)
        self.level_index = level_index
        self.edges = nn.ModuleList(
            ResampleToLevel(in_ch, out_channels, step, style)
            for in_ch, step in zip(input_channels, level_steps)
        )
        self.fusion = WeightedFusion(len(self.input_ids), fusion, fusion_eps, out_channels)
        self.act = make_activation(activation)
        self.conv = SeparableConvNorm(out_channels, separable_conv, style)

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


class PyramidCell(nn.Module):
    """A cell over levels ``min_level..max_level``: ``L`` maps in, ``L`` maps out (plus
    the inputs, for a residual cell).

    Input ``i`` has shape ``(N, in_channels[i], H_i, W_i)`` at stride ``2**(min_level+i)``;
    output ``i`` has shape ``(N, out_channels, H_i, W_i)``. The caller's list is not
    modified.
    """

    def __init__(
        self,
        nodes: Sequence[PyramidNode],
        min_level: int,
        in_channels: Sequence[int],
        out_channels: int,
        fusion: str = "fast_normalized",
        fusion_eps: float = 1e-4,
        activation: str = "swish",
        separable_conv: bool = True,
        style: LayerStyle = LayerStyle(),
        residual: bool = False,
        residual_scale: float = 0.0,
    ):
        """
        Args:
            nodes: the spec, e.g. :func:`bifpn_nodes` ``(min_level, max_level)``.
            min_level: level of the first input.
            in_channels: channels of each input level; an edge whose source has other
                than ``out_channels`` channels gets its own 1x1 conv + norm.
            out_channels: channels of every node.
            fusion, fusion_eps: see :class:`WeightedFusion`.
            activation: applied after fusion, before the conv (see :func:`make_activation`).
            separable_conv: depthwise-separable (True) or dense 3x3 conv after fusion.
            style: norms, conv biases and max-pool padding (see :class:`LayerStyle`).
            residual: add each input to the cell's output at its level (an identity
                path through the cell), when every input already has ``out_channels``
                channels; otherwise the cell stays plain.
            residual_scale: the initial scale of the norm that ends each output node of
                a residual cell: 0 (the default) starts the cell as the identity; > 0
                starts it as ``input + residual_scale * normalised change``.
        """
        super().__init__()
        num_levels = len(in_channels)
        max_level = min_level + num_levels - 1
        node_levels = [min_level + i for i in range(num_levels)]
        node_channels = list(in_channels)
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
                    fusion=fusion,
                    fusion_eps=fusion_eps,
                    activation=activation,
                    separable_conv=separable_conv,
                    style=style,
                )
            )
            node_levels.append(node.level)
            node_channels.append(out_channels)
        self.output_ids: List[int] = output_node_ids(list(nodes), min_level, max_level)
        unfused = [min_level + k for k, i in enumerate(self.output_ids) if node_channels[i] != out_channels]
        if unfused:
            raise ValueError(f"levels {unfused} have no fused node to bring them to {out_channels} channels")
        if residual_scale < 0:
            raise ValueError(f"residual_scale={residual_scale} must be >= 0")
        self.residual = residual and all(c == out_channels for c in in_channels)
        if self.residual:
            self._scale_output_norms(residual_scale)

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

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        sizes: List[List[int]] = [[f.shape[-2], f.shape[-1]] for f in features]
        nodes: List[torch.Tensor] = list(features)
        for node in self.nodes:
            nodes.append(node(nodes, sizes))
        outputs = [nodes[i] for i in self.output_ids]
        if self.residual:
            outputs = [f + o for f, o in zip(features, outputs)]
        return outputs
