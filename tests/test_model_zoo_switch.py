"""Switching a Detectron2 model-zoo config to our necks takes only MODEL.BACKBONE.NAME,
and a model-zoo R50-FPN checkpoint loads into our FPN with no missing or unexpected keys."""
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import bifpn_d2

ZOO = {
    "retinanet": "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "rcnn": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
}


def _zoo_cfg(flavour: str, backbone_name: str = ""):
    cfg = get_cfg()
    bifpn_d2.add_bifpn_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(ZOO[flavour]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if backbone_name:
        cfg.MODEL.BACKBONE.NAME = backbone_name
    return cfg


@pytest.mark.parametrize(
    "flavour, backbone_name",
    [
        ("retinanet", "build_retinanet_resnet_bifpn_backbone"),
        ("rcnn", "build_resnet_bifpn_backbone"),
        ("retinanet", "build_retinanet_resnet_weighted_fpn_backbone"),
        ("rcnn", "build_resnet_weighted_fpn_backbone"),
    ],
)
def test_only_backbone_name_changes(flavour, backbone_name):
    torch.manual_seed(0)
    model = build_model(_zoo_cfg(flavour, backbone_name)).eval()
    with torch.no_grad():
        (result,) = model([{"image": torch.randint(0, 255, (3, 150, 190), dtype=torch.uint8)}])
    assert result["instances"].image_size == (150, 190)


@pytest.mark.parametrize(
    "flavour, backbone_name",
    [
        ("retinanet", "build_retinanet_resnet_weighted_fpn_backbone"),
        ("rcnn", "build_resnet_weighted_fpn_backbone"),
    ],
)
def test_model_zoo_fpn_checkpoint_loads(flavour, backbone_name):
    zoo_model = build_model(_zoo_cfg(flavour))
    our_model = build_model(_zoo_cfg(flavour, backbone_name))
    result = our_model.load_state_dict(zoo_model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
