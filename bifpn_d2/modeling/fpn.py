"""FPN (Lin et al. 2017) with weighted fusion, compatible with Detectron2's FPN.

With ``fuse_type="sum"`` and the same arguments, the module and parameter names
(``fpn_lateral{stage}``, ``fpn_output{stage}``, ``top_block.p6/p7``) and the outputs equal
those of ``detectron2.modeling.backbone.FPN``, so Detectron2 model zoo checkpoints load
unchanged. Two things differ by design:

- the top-down path resizes to the exact size of the finer level instead of a fixed
  factor of 2, so inputs of any size work (Detectron2's FPN needs multiples of 32; by
  default ours asks Detectron2 for the same padding, so a checkpoint sees the same input);
- ``fuse_type`` also accepts the learnable fusions of EfficientDet (``weighted``,
  ``softmax``, ``fast_normalized``), whose weights live in ``fpn_fusion{stage}``.
"""
import copy
from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling.backbone import Backbone
from torch import nn

from ..layers import WeightedFusion
from .pyramid_backbone import PyramidBackbone

__all__ = ["WeightedFPN"]


class WeightedFPN(PyramidBackbone):
    """Bottom-up network + lateral 1x1 convs + top-down fusion + 3x3 output convs.

    Output ``p{l}`` has shape ``(N, out_channels, ceil(H / 2**l), ceil(W / 2**l))`` for each
    input level and each level the top block adds.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        fusion_eps: float = 1e-4,
        size_divisibility: Optional[int] = None,
    ):
        """
        Args:
            bottom_up: a Detectron2 backbone.
            in_features: its outputs that feed the pyramid, finest first, at successive
                strides (e.g. ``["res2", "res3", "res4", "res5"]``).
            out_channels: channels of every pyramid level.
            norm: Detectron2 norm name for the lateral and output convs ("" for none).
            top_block: adds levels above the last (see :mod:`top_blocks`); its
                ``in_feature`` is a bottom-up name or one of our ``p{l}`` outputs.
            fuse_type: one of :data:`FUSION_METHODS` for merging the upsampled coarser
                level into each lateral.
            fusion_eps: epsilon of ``fast_normalized`` fusion.
            size_divisibility: see :class:`PyramidBackbone` (None: the last input stride,
                as Detectron2's FPN).
        """
        num_extra = top_block.num_levels if top_block is not None else 0
        super().__init__(bottom_up, in_features, out_channels, num_extra, size_divisibility)
        levels = self.input_levels
        in_shapes = bottom_up.output_shape()
        use_bias = norm == ""
        lateral_convs, output_convs, fusions = [], [], []
        for name, level in zip(in_features, levels):
            lateral = Conv2d(in_shapes[name].channels, out_channels, kernel_size=1, bias=use_bias,
                             norm=get_norm(norm, out_channels))
            output = Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, out_channels))
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
            if level == levels[-1]:  # nothing to fuse at the top: an identity, no parameters
                fusions.append(WeightedFusion(1, "sum"))
            else:
                fusions.append(WeightedFusion(2, fuse_type, fusion_eps, out_channels))
                self.add_module(f"fpn_fusion{level}", fusions[-1])
        # Top-down order (coarsest first), as the forward pass walks them. Plain lists, so
        # that parameters are named only once (fpn_lateral5, ...), as in Detectron2.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.fusions = fusions[::-1]
        self.check_top_block(top_block, list(in_shapes) + self._out_features[: len(levels)])
        self.top_block = top_block
        self.fuse_type = fuse_type

    def freeze_for_inference_(self) -> None:
        """Replace each learnable fusion by its frozen stand-in (see
        :meth:`WeightedFusion.frozen`), under both of its names (``fpn_fusion<level>``
        and the entry of ``fusions``)."""
        frozen = {id(f): f.frozen() for f in self.fusions}
        for name, child in list(self.named_children()):
            if id(child) in frozen:
                setattr(self, name, frozen[id(child)])
        self.fusions = [frozen[id(f)] for f in self.fusions]

    def __prepare_scriptable__(self) -> "WeightedFPN":
        """TorchScript cannot iterate plain lists of modules: script a copy that holds
        them in ModuleLists instead of named attributes (same weights, same outputs)."""
        scriptable = copy.deepcopy(self)
        for attr in ("lateral_convs", "output_convs", "fusions"):
            setattr(scriptable, attr, nn.ModuleList(getattr(scriptable, attr)))
        for name, _ in self.named_children():
            if name.startswith("fpn_"):
                delattr(scriptable, name)
        return scriptable

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: ``(N, 3, H, W)`` images.
        Returns:
            ``{"p2": (N, C, H/4, W/4), ...}``, one map per output level, finest first.
        """
        bottom_up_features = self.bottom_up(x)
        num_levels = len(self.in_features)
        results: List[torch.Tensor] = []
        coarser: Optional[torch.Tensor] = None
        for idx, (lateral_conv, output_conv, fusion) in enumerate(
            zip(self.lateral_convs, self.output_convs, self.fusions)
        ):
            lateral = lateral_conv(bottom_up_features[self.in_features[num_levels - 1 - idx]])
            if coarser is None:
                inputs = [lateral]
            else:
                size = [lateral.shape[-2], lateral.shape[-1]]
                inputs = [lateral, F.interpolate(coarser, size=size, mode="nearest")]
            coarser = fusion(inputs)
            results.insert(0, output_conv(coarser))
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                source = bottom_up_features[name]
            else:
                source = results[self._out_features.index(name)]
            results.extend(self.top_block(source))
        return self.named_outputs(results)
