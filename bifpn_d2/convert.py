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

ImageNet EfficientNets convert too: torchvision's EfficientNet-B0..B7 hold the same
tensors as timm's ``efficientnet_b0..b7`` in the same order under other names
(``features.1.0.block.0.0.weight`` is ``blocks.0.0.conv_dw.weight``); they are mapped by
position, and every pair is checked to have the same shape and parameter kind. The
converted B0-B4 give torchvision's outputs exactly; torchvision trained B5-B7 with
batch-norm eps 1e-3, timm's ``efficientnet_b5..b7`` use 1e-5, so those differ slightly.

Every conversion reports the missing keys (the target model has them, the file does not)
and the unexpected keys (in the file, not in the target); a shape mismatch is an error.
"""
import logging
import os
import re
from typing import Dict, List, NamedTuple, Sequence, Tuple

import timm
import torch

from .checkpoint import HEAD_PREFIXES, read_state_dict
from .modeling.bifpn import BiFPN
from .modeling.efficientnet import EFFICIENTNET_NAMES

__all__ = [
    "Report",
    "convert_effdet",
    "convert_effdet_file",
    "convert_effdet_state_dict",
    "convert_efficientnet",
    "convert_efficientnet_file",
    "log_report",
    "torchvision_to_timm",
]

logger = logging.getLogger(__name__)
BODY_PREFIX = "backbone.bottom_up.body."  # our EfficientNet inside a detector's backbone

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


class Report(NamedTuple):
    """What a conversion left out: target keys the file lacks, file keys the target lacks."""

    missing: List[str]
    unexpected: List[str]


def torchvision_to_timm(state: Dict[str, torch.Tensor], model_name: str) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ``efficientnet_bX`` state dict to timm's ``model_name`` names
    (classification model, head included), by position.

    Raises:
        ValueError: the tensors do not pair up one to one with equal shapes and kinds.
    """
    reference = timm.create_model(model_name, pretrained=False).state_dict()
    if len(state) != len(reference):
        raise ValueError(f"{len(state)} tensors, but timm's {model_name} has {len(reference)}: "
                         "not a torchvision checkpoint of this EfficientNet size (see --model)")
    renamed = {}
    for (src, value), (dst, ref) in zip(state.items(), reference.items()):
        if src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1] or value.shape != ref.shape:
            raise ValueError(f"{src} {tuple(value.shape)} does not pair with {model_name}'s {dst} "
                             f"{tuple(ref.shape)}: another EfficientNet size, or keys out of order")
        renamed[dst] = value
    return renamed


def convert_efficientnet(
    state: Dict[str, torch.Tensor], model_name: str, to: str
) -> Tuple[Dict[str, torch.Tensor], Report]:
    """(a): timm or torchvision ImageNet weights -> our EfficientNet bottom-up.

    Args:
        state: the classification checkpoint's state dict.
        model_name: the timm name of the EfficientNet (one of ``EFFICIENTNET_NAMES``).
        to: ``"backbone"`` (timm names, for ``MODEL.EFFICIENTNET.WEIGHTS``) or
            ``"detectron2"`` (names prefixed ``backbone.bottom_up.body.``, for ``MODEL.WEIGHTS``).
    Returns:
        the converted state dict and what it lacks or has in excess, compared with
        ``model_name`` as a feature extractor (the classifier head is dropped).
    """
    if model_name not in EFFICIENTNET_NAMES:
        raise ValueError(f"--model {model_name!r} is not one of {list(EFFICIENTNET_NAMES)}")
    if any(k.startswith("features.") for k in state):
        state = torchvision_to_timm(state, model_name)
    elif not any(k.startswith("conv_stem.") for k in state):
        raise ValueError("neither timm (conv_stem.*) nor torchvision (features.*) EfficientNet names")
    body = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    target = timm.create_model(model_name, pretrained=False, features_only=True).state_dict()
    _check_shapes(body, target)
    report = Report(sorted(set(target) - set(body)), sorted(set(body) - set(target)))
    if to == "detectron2":
        body = {BODY_PREFIX + k: v for k, v in body.items()}
    return body, report


def convert_effdet(state: Dict[str, torch.Tensor], model: BiFPN) -> Tuple[Dict[str, torch.Tensor], Report]:
    """(b): an effdet ``EfficientDet`` state dict -> a Detectron2 checkpoint of ``model``
    (keys ``backbone.*``). Unexpected keys include effdet's heads."""
    if all(k.startswith("model.") for k in state):  # saved from effdet's DetBench wrappers
        state = {k[len("model."):]: v for k, v in state.items()}
    converted, unconverted = convert_effdet_state_dict(state, model)
    target = model.state_dict()
    _check_shapes(converted, target)
    report = Report(sorted(set(target) - set(converted)), sorted(set(converted) - set(target)) + unconverted)
    return {"backbone." + k: v for k, v in converted.items()}, report


def _check_shapes(state: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]) -> None:
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
             if k in target and v.shape != target[k].shape]
    if wrong:
        raise ValueError(f"{len(wrong)} tensors have the wrong shape for the target model (file vs model): "
                         + "; ".join(wrong[:5]))


def _save(state: Dict[str, torch.Tensor], path: str, detectron2_format: bool) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if detectron2_format:
        torch.save({"model": state, "__author__": "bifpn_d2.convert"}, path)
    else:
        torch.save(state, path)


def log_report(report: Report, converted: int, path: str) -> None:
    logger.info("Wrote %d tensors to %s", converted, path)
    for name, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if not keys:
            logger.info("no %s keys", name)
            continue
        groups: Dict[str, int] = {}
        for key in keys:
            group = ".".join(key.split(".")[:2]) + ".*"
            groups[group] = groups.get(group, 0) + 1
        logger.warning("%d %s keys: %s", len(keys), name, ", ".join(f"{g} ({n})" for g, n in groups.items()))


def convert_efficientnet_file(source: str, output: str, model_name: str = "efficientnet_b0",
                              to: str = "backbone") -> Report:
    """Read an ImageNet EfficientNet checkpoint, convert it (:func:`convert_efficientnet`)
    and write it to ``output`` (a Detectron2 checkpoint for ``to="detectron2"``)."""
    converted, report = convert_efficientnet(read_state_dict(source), model_name, to)
    _save(converted, output, detectron2_format=to == "detectron2")
    log_report(report, len(converted), output)
    return report


def convert_effdet_file(source: str, output: str, config_file: str, opts: Sequence[str] = ()) -> Report:
    """Read an effdet checkpoint, convert it for the BiFPN detector of ``config_file`` (+
    ``opts``, which must describe the same network) and write a Detectron2 checkpoint."""
    from detectron2.modeling import build_backbone

    from .engine.config import load_config

    cfg = load_config(config_file, opts)
    cfg.MODEL.EFFICIENTNET.WEIGHTS = ""  # the effdet file brings the bottom-up weights too
    backbone = build_backbone(cfg)
    if not isinstance(backbone, BiFPN):
        raise ValueError(f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} builds a "
                         f"{type(backbone).__name__}, not a BiFPN")
    converted, report = convert_effdet(read_state_dict(source), backbone)
    _save(converted, output, detectron2_format=True)
    log_report(report, len(converted), output)
    return report
