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


@pytest.mark.parametrize("flavour", ["retinanet", "rcnn"])
def test_switching_the_name_alone_builds_the_study_recipe(flavour):
    """A Detectron2 config that changes only MODEL.BACKBONE.NAME gets the recipe the neck
    study chose on its dev split: 3 cells, residual (every cell after the first, whose
    inputs have the neck's width), LN, and, after the cells, RetinaNet's P6/P7 by strided
    convs from C5 (the FPN's), R-CNN's P6 by a strided conv from the cells' P5."""
    from bifpn_d2 import ConvP6P7TopBlock
    from bifpn_d2.modeling import bifpn_switch

    cfg = _zoo_cfg(flavour)
    cfg.MODEL.BACKBONE.NAME = bifpn_switch(cfg.MODEL.BACKBONE.NAME)
    backbone = build_model(cfg).backbone
    assert [cell.residual for cell in backbone.cells] == [False, True, True]
    assert isinstance(backbone.top_block, ConvP6P7TopBlock) and backbone.top_after_cells
    assert backbone.top_block.in_feature == ("res5" if flavour == "retinanet" else "p5")
    assert backbone.top_block.num_levels == (2 if flavour == "retinanet" else 1)
    norms = {type(node.conv.norm).__name__ for cell in backbone.cells for node in cell.nodes}
    assert norms == {"ChannelLayerNorm"}


def test_synthetic_pairs_differ_only_in_the_backbone_name():
    """Each shipped synthetic BiFPN config is its FPN config with the backbone name switched
    (what tools/compare_necks.py trains), so the study's pairs are what a user gets."""
    from pathlib import Path

    from bifpn_d2.engine.config import load_config
    from bifpn_d2.modeling import bifpn_switch

    root = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
    for fpn in sorted(root.glob("*-FPN.yaml")):
        fpn_cfg = load_config(str(fpn))
        switched = load_config(str(fpn), ["MODEL.BACKBONE.NAME", bifpn_switch(fpn_cfg.MODEL.BACKBONE.NAME)])
        shipped = load_config(str(fpn).replace("-FPN.yaml", "-BiFPN.yaml"))
        for cfg in (switched, shipped):
            cfg.OUTPUT_DIR = ""
            cfg.MODEL.FPN.FUSE_TYPE = "sum"
        assert switched == shipped, fpn.name


def test_switch_refuses_a_backbone_without_an_fpn():
    from bifpn_d2.modeling import bifpn_switch

    with pytest.raises(ValueError, match="build_resnet_backbone.*is not an FPN to switch; FPN backbones: "):
        bifpn_switch("build_resnet_backbone")
