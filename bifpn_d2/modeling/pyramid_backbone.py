"""What every pyramid neck shares, as a Detectron2 ``Backbone`` base class.

A pyramid backbone wraps a bottom-up network, reads its outputs ``in_features`` (at
successive strides), may add coarser levels with a top block (Detectron2's protocol:
``in_feature``, ``num_levels``, ``forward(x) -> [maps]``), and returns one map per level
named ``p{level}`` (stride ``2**level``), all with ``out_channels`` channels.
"""
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.modeling.backbone import Backbone
from torch import nn

from .pyramid_graph import pyramid_levels

__all__ = ["PyramidBackbone"]


class PyramidBackbone(Backbone):
    """Input validation, levels, output names and shapes, and the padding Detectron2
    applies to input images, for :class:`~bifpn_d2.modeling.BiFPN` and
    :class:`~bifpn_d2.modeling.WeightedFPN`.

    Attributes:
        bottom_up, in_features: as given.
        input_levels: the level of each of ``in_features``, finest first.
        min_level, max_level: the first and last output level.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        num_extra_levels: int,
        size_divisibility: Optional[int] = None,
    ):
        """
        Args:
            bottom_up: a Detectron2 backbone (ResNet, EfficientNet, ...).
            in_features: its outputs that feed the pyramid, finest first, at successive
                strides (e.g. ``["res3", "res4", "res5"]``).
            out_channels: channels of every output level.
            num_extra_levels: levels added above the last input (by a top block).
            size_divisibility: what Detectron2 pads input images to a multiple of. None
                (default) pads to the stride of the last input level, as Detectron2's FPN
                does: every Detectron2 head then sees the level sizes it expects
                (``SemSegFPNHead`` adds levels upsampled by exact factors of 2), and a
                Detectron2 checkpoint sees the inputs it was trained on. 0 turns padding
                off (our necks resize to exact sizes and need none).
        """
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        levels = pyramid_levels(bottom_up, in_features)
        if size_divisibility is None:
            size_divisibility = 2 ** levels[-1]
        if size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.input_levels = levels
        self.min_level, self.max_level = levels[0], levels[-1] + num_extra_levels
        self._size_divisibility = size_divisibility
        self._out_features = [f"p{level}" for level in range(self.min_level, self.max_level + 1)]
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._out_feature_strides = {name: 2 ** int(name[1:]) for name in self._out_features}

    def check_top_block(self, top_block: Optional[nn.Module], sources: Sequence[str]) -> None:
        """Refuse a top block that reads a map not among ``sources``."""
        if top_block is not None and top_block.in_feature not in sources:
            raise ValueError(
                f"the top block reads {top_block.in_feature!r}, which is not one of {list(sources)}"
            )

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility}

    def named_outputs(self, features: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``{"p{min_level}": features[0], ...}``: one map per output level, finest first."""
        outputs: Dict[str, torch.Tensor] = {}
        for name, feature in zip(self._out_features, features):
            outputs[name] = feature
        return outputs
