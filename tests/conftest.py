"""Shared test helpers: small configs for every registered builder."""
import pytest
import torch
from detectron2.config import get_cfg

import bifpn_d2
from bifpn_d2.modeling import builders

BUILDER_NAMES = [n for n in builders.__all__ if n.startswith("build_") and n != "build_efficientnet_backbone"]

torch.set_num_threads(2)


def small_cfg(builder_name: str):
    """A Detectron2 config for ``builder_name`` with a small bottom-up (ResNet-18 or
    EfficientNet-B0), narrow necks and nothing frozen, so every parameter trains."""
    cfg = get_cfg()
    bifpn_d2.add_bifpn_config(cfg)
    cfg.MODEL.BACKBONE.NAME = builder_name
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.BIFPN.OUT_CHANNELS = 32
    cfg.MODEL.BIFPN.NUM_CELLS = 2
    cfg.MODEL.BIFPN.NORM = "BN"  # EfficientDet's (the default, LN, is tested in test_drop_in.py)
    retinanet = "retinanet" in builder_name
    if "efficientnet" in builder_name:
        cfg.MODEL.FPN.IN_FEATURES = ["c3", "c4", "c5"] if retinanet else ["c2", "c3", "c4", "c5"]
    else:
        features = ["res3", "res4", "res5"] if retinanet else ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = features
        cfg.MODEL.RESNETS.OUT_FEATURES = list(cfg.MODEL.FPN.IN_FEATURES)
    return cfg


@pytest.fixture
def make_cfg():
    return small_cfg
