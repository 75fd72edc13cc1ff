"""Rename effdet (rwightman's EfficientDet) weights to this project's module names.

effdet's ``EfficientDet`` and our :class:`~bifpn_d2.modeling.EfficientDet` compute the same
network; only the names (and the order of the box regressions) differ::

    effdet                                          bifpn_d2 (EfficientDet meta-architecture)
    backbone.<timm name>                            backbone.bottom_up.body.<timm name>
    fpn.resample.<i>.conv.conv / .conv.bn           backbone.top_block.downsample.<j>.conv / .norm
    fpn.cell.<c>.fnode.<n>.combine.resample.<id>    backbone.cells.<c>.nodes.<n>.edges.<k>  (k:
                                                    position of input <id> in the node's inputs)
    fpn.cell.<c>.fnode.<n>.combine.edge_weights     backbone.cells.<c>.nodes.<n>.fusion.weight
    ...after_combine.conv.conv_dw / conv_pw / bn    backbone.cells.<c>.nodes.<n>.conv.depthwise / conv / norm
    ...after_combine.conv.conv / bn (dense conv)    backbone.cells.<c>.nodes.<n>.conv.conv / norm
    <net>.conv_rep.<r>.conv_dw / conv_pw            head.<net>.convs.<r>.depthwise / pointwise
    <net>.conv_rep.<r>.conv (dense head)            head.<net>.convs.<r>
    <net>.bn_rep.<r>.<level>.bn (levels first:      head.<net>.norms.<level>.<r>
      <net>.bn_rep.<level>.<r>)
    <net>.predict.conv_dw / conv_pw / conv          head.<net>.predictor.depthwise / pointwise / (dense)

``<net>`` is ``class_net`` or ``box_net``. effdet's box net predicts ``(dy, dx, dh, dw)`` per
anchor, Detectron2's ``Box2BoxTransform`` reads ``(dx, dy, dw, dh)``: the box predictor's
output channels are permuted. effdet's COCO checkpoints predict 90 classes (COCO category
ids 1-90, 10 of them unused); ``keep_classes=COCO_THING_CLASSES`` keeps the 80 that
Detectron2's COCO datasets use, in their order.

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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import timm
import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from torch import nn

from .checkpoint import HEAD_PREFIXES, read_state_dict
from .modeling.bifpn import BiFPN
from .modeling.efficientnet import EFFICIENTNET_NAMES

__all__ = [
    "COCO_THING_CLASSES",
    "Report",
    "box_channel_order",
    "check_shapes",
    "convert_effdet",
    "convert_effdet_detector",
    "convert_effdet_file",
    "convert_effdet_state_dict",
    "convert_efficientnet",
    "convert_efficientnet_file",
    "log_report",
    "strip_bench_prefix",
    "torchvision_to_timm",
]

logger = logging.getLogger(__name__)
BODY_PREFIX = "backbone.bottom_up.body."  # our EfficientNet inside a detector's backbone

# effdet's class index (COCO category id - 1) of each of Detectron2's 80 COCO classes.
COCO_THING_CLASSES = tuple(c["id"] - 1 for c in COCO_CATEGORIES if c["isthing"])

_TOP = re.compile(r"^fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_EDGE = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.(conv|bn)\.(.+)$")
_WEIGHTS = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights$")
_CONV = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.(conv_dw|conv_pw|conv|bn)\.(.+)$")
_LAYER = {"conv": "conv", "bn": "norm", "conv_dw": "depthwise", "conv_pw": "conv"}
_HEAD_CONV = re.compile(
    r"^(class_net|box_net)\.(?:conv_rep\.(\d+)|predict)\.(conv_dw|conv_pw|conv)\.(weight|bias)$"
)
_HEAD_NORM = re.compile(r"^(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.(bn\.)?(.+)$")
_HEAD_LAYER = {"conv_dw": ".depthwise", "conv_pw": ".pointwise", "conv": ""}


def strip_bench_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the ``model.`` prefix of state dicts saved from effdet's ``DetBench*`` wrappers."""
    if state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return state


def convert_effdet_state_dict(
    state: Dict[str, torch.Tensor], model: BiFPN
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The backbone part: effdet's ``backbone.*`` and ``fpn.*`` for our :class:`BiFPN`.

    Args:
        state: an effdet ``EfficientDet`` state dict (keys ``backbone.*``, ``fpn.*``, ...).
        model: the :class:`BiFPN` to load into; its node specs give each edge's position.
    Returns:
        ``(converted, unconverted)``: the state dict for ``model.load_state_dict`` and the
        effdet keys it does not cover (the heads).
    Raises:
        ValueError: ``model`` has residual cells, which effdet's BiFPN does not have (the
            weights would load and the outputs differ).
    """
    if any(cell.residual for cell in model.cells):
        raise ValueError("effdet's BiFPN cells are plain: the model to convert into needs "
                         "MODEL.BIFPN.RESIDUAL False (the configs in configs/EfficientDet set it)")
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


def box_channel_order(num_anchors: int) -> List[int]:
    """effdet's box-net output channel for each of ours: ours ``a * 4 + j`` is
    ``(dx, dy, dw, dh)[j]`` of anchor ``a``, effdet's ``(dy, dx, dh, dw)``."""
    return [4 * a + j for a in range(num_anchors) for j in (1, 0, 3, 2)]


def _head_key(key: str) -> Optional[Tuple[str, bool]]:
    """Our ``head.*`` name of an effdet head key, and whether the tensor is the output
    layer of the net (whose channels are per anchor); None for other keys."""
    if m := _HEAD_CONV.match(key):
        net, repeat, layer, kind = m[1], m[2], m[3], m[4]
        module = f"convs.{repeat}" if repeat is not None else "predictor"
        is_output = repeat is None and layer != "conv_dw"
        return f"head.{net}.{module}{_HEAD_LAYER[layer]}.{kind}", is_output
    if m := _HEAD_NORM.match(key):
        # With the "bn." level the layout is effdet's default, repeats first.
        first, second = (m[3], m[2]) if m[4] else (m[2], m[3])
        return f"head.{m[1]}.norms.{first}.{second}.{m[5]}", False
    return None


def _output_channels(value: torch.Tensor, net: str, keep_classes: Optional[Sequence[int]],
                     num_classes: int) -> torch.Tensor:
    """Reorder (box net) or select (class net) the per-anchor output channels along dim 0."""
    if net == "box_net":
        order = box_channel_order(value.shape[0] // 4)
    elif keep_classes is not None:
        num_anchors = value.shape[0] // num_classes
        order = [num_classes * a + k for a in range(num_anchors) for k in keep_classes]
    else:
        return value
    return value[torch.tensor(order)]


def check_shapes(state: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` listing the tensors of ``state`` whose shape differs from the
    tensor of the same name in ``target``."""
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
             if k in target and v.shape != target[k].shape]
    if wrong:
        raise ValueError(f"{len(wrong)} tensors have the wrong shape for the target model (file vs model): "
                         + "; ".join(wrong[:5]))


class Report(NamedTuple):
    """What a conversion left out: target keys the file lacks, file keys the target lacks."""

    missing: List[str]
    unexpected: List[str]


def _report(
    converted: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], unconverted: Sequence[str] = ()
) -> Report:
    """Check the shapes of ``converted`` against ``target`` (see :func:`check_shapes`) and
    list the keys each lacks; ``unconverted`` source keys count as unexpected."""
    check_shapes(converted, target)
    missing = sorted(set(target) - set(converted))
    return Report(missing, sorted(set(converted) - set(target)) + list(unconverted))


def convert_effdet_detector(
    state: Dict[str, torch.Tensor],
    model: nn.Module,
    keep_classes: Optional[Sequence[int]] = None,
) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """A whole effdet ``EfficientDet`` (backbone, BiFPN, class and box nets) for our
    :class:`~bifpn_d2.modeling.EfficientDet` ``model``.

    Args:
        state: effdet's state dict (``model.``-prefixed bench state dicts are accepted).
        model: our detector, whose ``backbone`` is a :class:`BiFPN` over the same
            EfficientNet and whose ``head`` has the same widths, repeats and anchors.
        keep_classes: effdet class indices to keep, in our class order (e.g.
            :data:`COCO_THING_CLASSES` for a 90-class COCO checkpoint and an 80-class
            model); None keeps all.
    Returns:
        ``(converted, missing, unexpected)``: the state dict for ``model.load_state_dict``,
        the model's keys that it lacks and the keys (effdet's or converted) that the
        model does not have.
    Raises:
        ValueError: a converted tensor's shape differs from the model's (another model
            size, class count or padding flavour); the message lists them.
    """
    if not isinstance(model.backbone, BiFPN):
        raise ValueError(f"the model's backbone is a {type(model.backbone).__name__}, not a BiFPN")
    state = strip_bench_prefix(state)
    neck, rest = convert_effdet_state_dict(state, model.backbone)
    converted = {"backbone." + k: v for k, v in neck.items()}
    num_classes = None
    weight = state.get("class_net.predict.conv_pw.weight", state.get("class_net.predict.conv.weight"))
    if weight is not None:
        num_classes = weight.shape[0] // model.head.num_anchors
    if keep_classes is not None and not all(0 <= k < (num_classes or 0) for k in keep_classes):
        raise ValueError(f"keep_classes must lie within the checkpoint's {num_classes} classes")
    unconverted: List[str] = []
    for key in rest:
        mapped = _head_key(key)
        if mapped is None:
            unconverted.append(key)
            continue
        new_key, is_output = mapped
        value = state[key]
        if is_output:
            value = _output_channels(value, key.split(".")[0], keep_classes, num_classes)
        converted[new_key] = value
    missing, unexpected = _report(converted, model.state_dict(), unconverted)
    return converted, missing, unexpected


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
    report = _report(body, target)
    if to == "detectron2":
        body = {BODY_PREFIX + k: v for k, v in body.items()}
    return body, report


def convert_effdet(state: Dict[str, torch.Tensor], model: BiFPN) -> Tuple[Dict[str, torch.Tensor], Report]:
    """(b): an effdet ``EfficientDet`` state dict -> a Detectron2 checkpoint of ``model``
    (keys ``backbone.*``). Unexpected keys include effdet's heads."""
    converted, unconverted = convert_effdet_state_dict(strip_bench_prefix(state), model)
    report = _report(converted, model.state_dict(), unconverted)
    return {"backbone." + k: v for k, v in converted.items()}, report


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


def convert_effdet_file(source: str, output: str, config_file: str, opts: Sequence[str] = (),
                        coco_80: bool = False) -> Report:
    """Read an effdet checkpoint, convert it for the detector of ``config_file`` (+ ``opts``,
    which must describe the same network) and write a Detectron2 checkpoint: the whole
    detector for ``MODEL.META_ARCHITECTURE: EfficientDet``, the backbone (BiFPN) alone for
    other meta-architectures. ``coco_80`` keeps Detectron2's 80 of effdet's 90 COCO classes."""
    from detectron2.modeling import build_backbone, build_model

    from .engine.config import load_config

    cfg = load_config(config_file, list(opts) + ["MODEL.DEVICE", "cpu"])  # renaming needs no GPU
    cfg.MODEL.EFFICIENTNET.WEIGHTS = ""  # the effdet file brings the bottom-up weights too
    state = read_state_dict(source)
    if cfg.MODEL.META_ARCHITECTURE == "EfficientDet":
        keep = COCO_THING_CLASSES if coco_80 else None
        converted, missing, unexpected = convert_effdet_detector(state, build_model(cfg), keep)
        report = Report(missing, unexpected)
    else:
        if coco_80:
            raise ValueError(f"--coco-80 selects classes of EfficientDet heads; MODEL.META_ARCHITECTURE="
                             f"{cfg.MODEL.META_ARCHITECTURE} converts only the backbone")
        backbone = build_backbone(cfg)
        if not isinstance(backbone, BiFPN):
            raise ValueError(f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} builds a "
                             f"{type(backbone).__name__}, not a BiFPN")
        converted, report = convert_effdet(state, backbone)
    _save(converted, output, detectron2_format=True)
    log_report(report, len(converted), output)
    return report
