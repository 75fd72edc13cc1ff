"""Tiny configs and inputs shared by the export, AMP, DDP, checkpoint and bad-input tests.

Every registered builder gets a config small enough to build and run in a fraction of a
second on a CPU: ResNet-18 (or EfficientNet-B0, the smallest preset) bottom-up, 16-channel
pyramids, 2 BiFPN cells, one-conv heads.

Training with batch norm in the pyramid needs more than one value per channel at every
level: one image of 96x128 has a 1x1 P7, so the training tests use batches of 2.
"""
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

import bifpn_d2
from bifpn_d2.modeling import builders

# Every builder this project registers, and the pyramid ones (all but the bare EfficientNet).
BUILDERS: List[str] = [name for name in builders.__all__ if name.startswith("build_")]
PYRAMID_BUILDERS: List[str] = [b for b in BUILDERS if b != "build_efficientnet_backbone"]
# For the slow checks (export): every ResNet builder, and EfficientNet under each neck and
# each pyramid flavour once (the EfficientNet bottom-up costs most of the time).
EXPORT_BUILDERS: List[str] = [b for b in PYRAMID_BUILDERS if "resnet" in b] + [
    "build_efficientnet_bifpn_backbone",
    "build_retinanet_efficientnet_weighted_fpn_backbone",
]
WIDTH = 16


class TinyBottomUp(Backbone):
    """A stand-in for ResNet with almost no compute: ``res2``..``res5`` (strides 4..32,
    8..32 channels), each a strided 3x3 conv + ReLU of the previous map."""

    def __init__(self):
        super().__init__()
        channels = [3, 8, 8, 16, 16, 32]
        self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(channels[:-1], channels[1:]))
        self._out_features = ["res2", "res3", "res4", "res5"]
        self._out_feature_channels = {f"res{i}": channels[i] for i in range(2, 6)}
        self._out_feature_strides = {f"res{i}": 2**i for i in range(2, 6)}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = {}
        for i, stage in enumerate(self.stages, start=1):
            x = torch.relu(stage(x))
            if i >= 2:
                outputs[f"res{i}"] = x
        return outputs


def is_retinanet_builder(name: str) -> bool:
    """RetinaNet-flavoured builders make P3-P7; the others the R-CNN pyramid P2-P6."""
    return "retinanet" in name


def tiny_cfg(builder: str = "build_retinanet_resnet_bifpn_backbone") -> CfgNode:
    """A detector config around ``builder``: RetinaNet for the RetinaNet-flavoured builders,
    Faster R-CNN (FPN-style ``StandardROIHeads``) for the others; 3 classes, CPU."""
    cfg = get_cfg()
    bifpn_d2.add_bifpn_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = builder
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # every parameter trains: the DDP and AMP tests see all
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BIFPN.OUT_CHANNELS = WIDTH
    cfg.MODEL.BIFPN.NUM_CELLS = 2
    cfg.MODEL.BIFPN.NORM = "BN"  # EfficientDet's: what the folding, DDP and checkpoint tests exercise
    cfg.MODEL.FPN.OUT_CHANNELS = WIDTH
    cfg.MODEL.FPN.FUSE_TYPE = "fast_normalized"  # learnable fusion weights in our FPN too
    retinanet = is_retinanet_builder(builder)
    if "efficientnet" in builder:
        features = ["c3", "c4", "c5"] if retinanet else ["c2", "c3", "c4", "c5"]
    else:
        features = ["res3", "res4", "res5"] if retinanet else ["res2", "res3", "res4", "res5"]
        cfg.MODEL.RESNETS.OUT_FEATURES = features
    cfg.MODEL.FPN.IN_FEATURES = features
    if retinanet:
        cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
        cfg.MODEL.RETINANET.NUM_CLASSES = 3
        cfg.MODEL.RETINANET.NUM_CONVS = 1
        cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
        sizes = [[s, s * 2 ** (1 / 3), s * 2 ** (2 / 3)] for s in (32, 64, 128, 256, 512)]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0  # random weights: keep detections to compare
    else:
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    return cfg


def tiny_efficientdet_cfg() -> CfgNode:
    """The EfficientDet meta-architecture on the tiny EfficientNet-B0 + BiFPN: one repeat in
    each head net, every candidate kept (random weights score low)."""
    cfg = tiny_cfg("build_retinanet_efficientnet_bifpn_backbone")
    cfg.MODEL.META_ARCHITECTURE = "EfficientDet"
    cfg.MODEL.BIFPN.RESIDUAL, cfg.MODEL.BIFPN.TOP_BLOCK = False, "efficientdet"  # EfficientDet's cells
    cfg.MODEL.EFFICIENTDET.NUM_CLASSES = 3
    cfg.MODEL.EFFICIENTDET.NUM_REPEATS = 1
    cfg.MODEL.EFFICIENTDET.SCORE_THRESH_TEST = 0.0
    return cfg


def build_tiny_backbone(builder: str, cfg: Optional[CfgNode] = None) -> nn.Module:
    """``builder`` applied to :func:`tiny_cfg` (or ``cfg``), in eval mode."""
    cfg = cfg or tiny_cfg(builder)
    return BACKBONE_REGISTRY.get(builder)(cfg, ShapeSpec(channels=3)).eval()


def build_tiny_detector(builder: str, cfg: Optional[CfgNode] = None, seed: int = 0) -> nn.Module:
    """A tiny detector (eval mode), random weights from ``seed``."""
    torch.manual_seed(seed)
    return build_model(cfg or tiny_cfg(builder)).eval()


def randomize_norms_and_biases(model: nn.Module, seed: int = 0) -> None:
    """Batch-norm statistics and affine parameters away from 1/0, fusion weights away from
    1 and every bias of neck and heads shifted, so that a mis-assigned tensor shows in the
    outputs. Works on effdet's models and ours (it looks at module types and names only)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=generator) * (high - low) + low

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, low, high in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                                     (m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2)):
                    t.copy_(uniform(t, low, high))
        for name, p in model.named_parameters():
            if "edge_weights" in name or name.endswith("fusion.weight"):
                p.copy_(uniform(p, 0.1, 2.0))
            elif name.endswith(".bias") and not name.startswith(("backbone.", "bottom_up.")):
                p.add_(uniform(p, -0.5, 0.5))


def spread_scores(model: nn.Module) -> None:
    """Random-init heads score every anchor about the same (the prior, 0.01), so the order
    of detections rests on float round-off, which differs between PyTorch and
    onnxruntime; larger random head weights separate the scores. For models whose
    features are normalised (BiFPN): unnormalised ones would saturate the scores at 1. A
    BiFPN's P6/P7 made from C5 (RetinaNet's, as the FPN's) are not normalised: their convs
    get a tenth of their random weights, which keeps those levels on the others' scale."""
    names = ("head", "proposal_generator", "roi_heads")
    heads = [getattr(model, name) for name in names if hasattr(model, name)]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in heads:
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        top_block = getattr(getattr(model, "backbone", None), "top_block", None)
        if top_block is not None and getattr(top_block, "in_feature", "").startswith("res"):
            for p in top_block.parameters():
                p.mul_(0.1)


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A random ``(3, H, W)`` float image with pixel values in 0..255."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def training_input(height: int, width: int, num_boxes: int = 2, seed: int = 0) -> dict:
    """A Detectron2 training dict: an image and ``num_boxes`` random boxes (classes 0..2)."""
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width / 2, height / 2])
    wh = (torch.rand(num_boxes, 2, generator=generator) * 0.5 + 0.1) * torch.tensor([width, height])
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([width, height]))], dim=1)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.randint(0, 3, (num_boxes,), generator=generator)
    return {"image": image(height, width, seed), "instances": instances}


def training_losses(model: nn.Module, inputs: List[dict]) -> Dict[str, torch.Tensor]:
    """The loss dict of a detector in training mode (which logs to an ``EventStorage``)."""
    with EventStorage():
        return model(inputs)
