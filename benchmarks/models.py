"""What the benchmark tools run: configs, models built from them, inputs and steps.

A benchmark *subject* is either a whole Detectron2 meta-architecture (``build_model``),
fed a list of ``{"image", "instances", ...}`` dicts, or a backbone alone
(``build_backbone``), fed an ``(N, 3, H, W)`` tensor. :class:`PrecomputedFeatures` lets a
neck run without its bottom-up network, so that a neck can be timed alone.
"""

import os
from typing import Any, Dict, Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone import Backbone
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from bifpn_d2.config import add_bifpn_config
from bifpn_d2.engine.config import load_config

__all__ = [
    "COMPONENTS",
    "PrecomputedFeatures",
    "build_subject",
    "describe",
    "make_inputs",
    "subject_config",
    "training_step",
]

COMPONENTS = ("model", "backbone")


def subject_config(config_file: str = "", opts: Sequence[str] = (), backbone: str = "") -> CfgNode:
    """The config of a benchmark subject: ``config_file`` read by the engine's
    :func:`~bifpn_d2.engine.config.load_config` (without a file: Detectron2's defaults +
    :func:`add_bifpn_config`), with ``backbone`` as ``MODEL.BACKBONE.NAME`` (if given)
    before the ``KEY VALUE`` ``opts``. ``MODEL.DEVICE`` is ``cpu``: :func:`build_subject`
    puts each subject on the device it is measured on."""
    opts = (["MODEL.BACKBONE.NAME", backbone] if backbone else []) + list(opts) + ["MODEL.DEVICE", "cpu"]
    if config_file:
        return load_config(config_file, opts)
    cfg = add_bifpn_config(get_cfg())
    cfg.merge_from_list(opts)
    return cfg


def build_subject(cfg: CfgNode, component: str, device: torch.device) -> nn.Module:
    """The whole model (``component="model"``) or only its backbone, on ``device``."""
    if component not in COMPONENTS:
        raise ValueError(f"component {component!r} is not one of {list(COMPONENTS)}")
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = device.type
    if component == "model":
        return build_model(cfg).to(device)
    return build_backbone(cfg).to(device)


def make_inputs(component: str, batch: int, size: Sequence[int], device: torch.device, seed: int = 0) -> Any:
    """Random inputs of ``batch`` images of ``size = [H, W]``: a tensor for a backbone; for
    a model, Detectron2 dicts with 0-255 images and three ground-truth boxes each (one
    per size range) so that a training step has targets."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    images = torch.rand(batch, 3, height, width, generator=generator) * 255
    if component == "backbone":
        return images.to(device)
    inputs = []
    for image in images:
        instances = Instances((height, width))
        boxes = torch.tensor([[0.1, 0.1, 0.3, 0.25], [0.4, 0.3, 0.8, 0.7], [0.05, 0.5, 0.95, 0.98]])
        instances.gt_boxes = Boxes(boxes * torch.tensor([width, height, width, height]))
        instances.gt_classes = torch.tensor([0, 1, 2])
        inputs.append(
            {"image": image.to(device), "instances": instances.to(device), "height": height, "width": width}
        )
    return inputs


def training_step(subject: nn.Module, inputs: Any) -> None:
    """One forward + backward in train mode (no optimiser step; gradients are reset
    first): the sum of a model's losses, or the sum of a backbone's outputs."""
    subject.zero_grad(set_to_none=True)
    with EventStorage():  # Detectron2's losses log into one
        outputs = subject(inputs)
    loss = sum(v.sum() for v in outputs.values())
    loss.backward()


class PrecomputedFeatures(Backbone):
    """A bottom-up stand-in whose forward returns the feature dict it is given, so that
    a neck (``BiFPN``, ``WeightedFPN``, Detectron2's ``FPN``) runs on precomputed
    features: ``neck({"res3": ..., "res4": ...})``."""

    def __init__(self, shapes: Dict[str, ShapeSpec]):
        """``shapes``: name -> ``ShapeSpec(channels, stride)`` of each feature."""
        super().__init__()
        self._shapes = dict(shapes)

    @classmethod
    def like(cls, features: Dict[str, torch.Tensor], strides: Dict[str, int]) -> "PrecomputedFeatures":
        """A stand-in for ``features`` (name -> ``(N, C, H, W)``) at the given strides."""
        return cls({k: ShapeSpec(channels=v.shape[1], stride=strides[k]) for k, v in features.items()})

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return features


def describe(cfg: CfgNode, config_file: Optional[str]) -> str:
    """A short name for a benchmark subject: the config file's stem, else the backbone."""
    if config_file:
        return os.path.splitext(os.path.basename(config_file))[0]
    return cfg.MODEL.BACKBONE.NAME
