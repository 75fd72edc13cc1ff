"""Rename effdet (rwightman's EfficientDet) weights to this project's module names.

effdet's ``BiFpn`` and our :class:`BiFPN` compute the same graph; only the names differ::

    effdet                                          bifpn_d2 (BiFPN backbone)
    backbone.<timm name>                            bottom_up.body.<timm name>
    fpn.resample.<i>.conv.conv / .conv.bn           top_block.downsample.<j>.conv / .norm
    fpn.cell.<c>.fnode.<n>.combine.resample.<id>    cells.<c>.nodes.<n>.edges.<k>  (k: position
                                                    of input <id> in the node's inputs)
    fpn.cell.<c>.fnode.<n>.combine.edge_weights     cells.<c>.nodes.<n>.fusion.weight
    ...after_combine.conv.conv_dw / conv_pw / bn    cells.<c>.nodes.<n>.conv.depthwise / conv / norm
    ...after_combine.conv.conv / bn (dense conv)    cells.<c>.nodes.<n>.conv.conv / norm

The box and class heads of effdet have no counterpart in Detectron2's heads; they are
returned as unconverted keys.
"""
import re
from typing import Dict, List, Tuple

import torch

from .modeling.bifpn import BiFPN

__all__ = ["convert_effdet_state_dict"]

_TOP = re.compile(r"^fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_EDGE = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_WEIGHTS = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights$")
_CONV = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.(conv_dw|conv_pw|conv|bn)\.(.+)$")
_LAYER = {"conv": "conv", "bn": "norm", "conv_dw": "depthwise", "conv_pw": "conv"}


def convert_effdet_state_dict(
    state: Dict[str, torch.Tensor], model: BiFPN
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """
    Args:
        state: an effdet ``EfficientDet`` state dict (keys ``backbone.*``, ``fpn.*``, ...).
        model: the :class:`BiFPN` to load into; its node specs give each edge's position.
    Returns:
        ``(converted, unconverted)``: the state dict for ``model.load_state_dict`` and the
        effdet keys that have no counterpart (heads).
    """
    num_inputs = len(model.in_features)
    converted: Dict[str, torch.Tensor] = {}
    unconverted: List[str] = []
    for key, value in state.items():
        new_key = None
        if key.startswith("backbone."):
            new_key = "bottom_up.body." + key[len("backbone."):]
        elif m := _TOP.match(key):
            new_key = f"top_block.downsample.{int(m[1]) - num_inputs}.{_LAYER[m[2]]}.{m[3]}"
        elif m := _EDGE.match(key):
            cell, node, source = int(m[1]), int(m[2]), int(m[3])
            edge = model.cells[cell].nodes[node].input_ids.index(source)
            new_key = f"cells.{cell}.nodes.{node}.edges.{edge}.{_LAYER[m[4]]}.{m[5]}"
        elif m := _WEIGHTS.match(key):
            new_key = f"cells.{m[1]}.nodes.{m[2]}.fusion.weight"
        elif m := _CONV.match(key):
            new_key = f"cells.{m[1]}.nodes.{m[2]}.conv.{_LAYER[m[3]]}.{m[4]}"
        if new_key is None:
            unconverted.append(key)
        else:
            converted[new_key] = value
    return converted, unconverted
