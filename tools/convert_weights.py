#!/usr/bin/env python
"""Convert pretrained weights into files that bifpn_d2 models load.

Two conversions::

    # (a) an ImageNet EfficientNet (timm or torchvision names) for our EfficientNet
    #     bottom-up: --to backbone gives a file for MODEL.EFFICIENTNET.WEIGHTS, --to
    #     detectron2 a Detectron2 checkpoint (keys backbone.bottom_up.body.*) for
    #     MODEL.WEIGHTS of a detector with an EfficientNet + BiFPN/FPN backbone.
    python tools/convert_weights.py efficientnet b0.pth out.pth --model efficientnet_b0 --to backbone

    # (b) an effdet EfficientDet checkpoint for the detector of a config (for MODEL.WEIGHTS);
    #     the config must describe the same network (EfficientNet size, BiFPN width, cells,
    #     levels, head repeats, TF padding and biases for tf_ models). With META_ARCHITECTURE
    #     "EfficientDet" the whole model is converted (--coco-80: keep the 80 COCO classes of
    #     Detectron2 out of effdet's 90); with another detector (RetinaNet, Faster R-CNN)
    #     only its BiFPN backbone (keys backbone.*).
    python tools/convert_weights.py effdet --config-file cfg.yaml effdet_d0.pth out.pth [KEY VALUE ...]

torchvision's EfficientNet-B0..B7 hold the same tensors as timm's ``efficientnet_b0..b7``
in the same order under other names (``features.1.0.block.0.0.weight`` is
``blocks.0.0.conv_dw.weight``); they are mapped by position, and every pair is checked to
have the same shape and parameter kind. The converted B0-B4 give torchvision's outputs
exactly; torchvision trained B5-B7 with batch-norm eps 1e-3, timm's ``efficientnet_b5..b7``
use 1e-5, so those differ slightly. effdet's box and class nets have no counterpart in
Detectron2's own heads: converting for such a detector reports them as unexpected keys.

Each conversion prints the missing keys (the target model has them, the file does not)
and the unexpected keys (in the file, not in the target); a shape mismatch is an error.
"""
import argparse
import logging
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import timm
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.logger import setup_logger

from bifpn_d2 import BiFPN, add_bifpn_config
from bifpn_d2.checkpoint import read_state_dict
from bifpn_d2.convert import (
    COCO_THING_CLASSES,
    check_shapes,
    convert_effdet_detector,
    convert_effdet_state_dict,
    strip_bench_prefix,
)
from bifpn_d2.modeling.efficientnet import EFFICIENTNET_NAMES

logger = logging.getLogger("bifpn_d2.convert_weights")

BODY_PREFIX = "backbone.bottom_up.body."  # our EfficientNet inside a detector's backbone
# Classification-head tensors of a timm EfficientNet, unused by detection backbones.
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


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
    body = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    target = timm.create_model(model_name, pretrained=False, features_only=True).state_dict()
    check_shapes(body, target)
    report = Report(sorted(set(target) - set(body)), sorted(set(body) - set(target)))
    if to == "detectron2":
        body = {BODY_PREFIX + k: v for k, v in body.items()}
    return body, report


def convert_effdet(state: Dict[str, torch.Tensor], model: BiFPN) -> Tuple[Dict[str, torch.Tensor], Report]:
    """(b): an effdet ``EfficientDet`` state dict -> a Detectron2 checkpoint of ``model``
    (keys ``backbone.*``). Unexpected keys include effdet's heads."""
    converted, unconverted = convert_effdet_state_dict(strip_bench_prefix(state), model)
    target = model.state_dict()
    check_shapes(converted, target)
    report = Report(sorted(set(target) - set(converted)), sorted(set(converted) - set(target)) + unconverted)
    return {"backbone." + k: v for k, v in converted.items()}, report


def _save(state: Dict[str, torch.Tensor], path: str, detectron2_format: bool) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if detectron2_format:
        torch.save({"model": state, "__author__": "bifpn_d2 tools/convert_weights.py"}, path)
    else:
        torch.save(state, path)


def _log_report(report: Report, converted: int, path: str) -> None:
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


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    eff = commands.add_parser("efficientnet", help="timm/torchvision ImageNet EfficientNet weights")
    eff.add_argument("source", help="classification checkpoint (.pth/.pt/.safetensors)")
    eff.add_argument("output", help="file to write")
    eff.add_argument("--model", default="efficientnet_b0", help="timm name of the EfficientNet")
    eff.add_argument("--to", choices=["backbone", "detectron2"], default="backbone",
                     help="backbone: for MODEL.EFFICIENTNET.WEIGHTS; detectron2: for MODEL.WEIGHTS")
    det = commands.add_parser("effdet", help="effdet EfficientDet weights for a BiFPN detector")
    det.add_argument("source", help="effdet checkpoint")
    det.add_argument("output", help="Detectron2 checkpoint to write (for MODEL.WEIGHTS)")
    det.add_argument("--config-file", required=True, help="config of the BiFPN detector")
    det.add_argument("--coco-80", action="store_true",
                     help="the checkpoint has effdet's 90 COCO classes: keep Detectron2's 80")
    det.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs (last)")
    return parser


def main(argv: Optional[List[str]] = None) -> Report:
    """Run the command line ``argv``; return the report of missing and unexpected keys."""
    args = get_parser().parse_args(argv)
    setup_logger(name="bifpn_d2")
    state = read_state_dict(args.source)
    if args.command == "efficientnet":
        converted, report = convert_efficientnet(state, args.model, args.to)
        _save(converted, args.output, detectron2_format=args.to == "detectron2")
    else:
        cfg = get_cfg()
        add_bifpn_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        cfg.MODEL.EFFICIENTNET.WEIGHTS = ""  # the effdet file brings the bottom-up weights too
        cfg.MODEL.DEVICE = "cpu"  # renaming tensors needs no GPU
        if cfg.MODEL.META_ARCHITECTURE == "EfficientDet":
            keep = COCO_THING_CLASSES if args.coco_80 else None
            converted, *keys = convert_effdet_detector(state, build_model(cfg), keep)
            report = Report(*keys)
        else:
            if args.coco_80:
                raise ValueError(f"--coco-80 selects classes of EfficientDet heads; MODEL.META_ARCHITECTURE="
                                 f"{cfg.MODEL.META_ARCHITECTURE} converts only the backbone")
            backbone = build_backbone(cfg)
            if not isinstance(backbone, BiFPN):
                raise ValueError(f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} builds a "
                                 f"{type(backbone).__name__}, not a BiFPN")
            converted, report = convert_effdet(state, backbone)
        _save(converted, args.output, detectron2_format=True)
    _log_report(report, len(converted), args.output)
    return report


if __name__ == "__main__":
    main()
