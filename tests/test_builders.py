"""Every registered builder builds, runs forward and backward at odd sizes, and reports
correct names, strides and channels."""
import math

import pytest
import torch
from conftest import BUILDER_NAMES, small_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

BIFPN_VARIANTS = [  # options that change what the BiFPN builder makes
    ("build_retinanet_resnet_bifpn_backbone", {"TOP_BLOCK": "p6p7_c5"}),
    ("build_resnet_bifpn_backbone", {"TOP_BLOCK": "p6p7_c5"}),  # one conv level: P6
    ("build_retinanet_resnet_bifpn_backbone", {"CONV_INIT": "c2_xavier"}),
    ("build_retinanet_resnet_bifpn_backbone", {"RESIDUAL": True, "TOP_BLOCK": "p6p7_c5"}),
    ("build_resnet_bifpn_backbone", {"TOP_BLOCK": "maxpool"}),  # P6 from the cells' P5, after them
    ("build_retinanet_resnet_bifpn_backbone", {"TOP_BLOCK": "p6p7_p5"}),
    ("build_resnet_bifpn_backbone", {"TOP_BLOCK": "p6p7_c5_after"}),  # P6 from C5, after the cells
]


@pytest.mark.parametrize("name", BUILDER_NAMES)
def test_builder_shapes_and_gradients(name):
    check_builder(name, small_cfg(name))


@pytest.mark.parametrize("name,options", BIFPN_VARIANTS, ids=[f"{n}-{o}" for n, o in BIFPN_VARIANTS])
def test_bifpn_variants_shapes_and_gradients(name, options):
    cfg = small_cfg(name)
    cfg.MODEL.BIFPN.merge_from_list([x for item in options.items() for x in item])
    check_builder(name, cfg)


def check_builder(name, cfg):
    """Names, strides and channels of the outputs; exact sizes at two odd input sizes;
    a gradient for every trainable parameter."""
    torch.manual_seed(0)
    backbone = BACKBONE_REGISTRY.get(name)(cfg, ShapeSpec(channels=3))
    levels = range(3, 8) if "retinanet" in name else range(2, 7)
    expected = [f"p{level}" for level in levels]
    shapes = backbone.output_shape()
    assert list(shapes) == expected
    assert all(shapes[f"p{level}"].stride == 2**level for level in levels)
    channels = cfg.MODEL.BIFPN.OUT_CHANNELS if "bifpn" in name else cfg.MODEL.FPN.OUT_CHANNELS
    assert all(s.channels == channels for s in shapes.values())
    # Detectron2 pads images to the last input stride (res5: 32), as for its own FPN.
    assert backbone.size_divisibility == 32 and backbone.padding_constraints == {"size_divisibility": 32}

    for batch, height, width in [(2, 200, 249), (1, 333, 517)]:
        backbone.zero_grad()
        outputs = backbone(torch.randn(batch, 3, height, width))
        assert list(outputs) == expected
        for level in levels:
            stride = 2**level
            expected_shape = (batch, channels, math.ceil(height / stride), math.ceil(width / stride))
            assert outputs[f"p{level}"].shape == expected_shape
        sum(o.square().mean() for o in outputs.values()).backward()
        without_grad = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
        assert not without_grad, f"parameters without gradient: {without_grad}"


def test_efficientnet_backbone_outputs():
    cfg = small_cfg("build_efficientnet_bifpn_backbone")
    backbone = BACKBONE_REGISTRY.get("build_efficientnet_backbone")(cfg, ShapeSpec(channels=3))
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "c1": (16, 2), "c2": (24, 4), "c3": (40, 8), "c4": (112, 16), "c5": (320, 32)
    }
    outputs = backbone(torch.randn(1, 3, 97, 131))
    assert outputs["c5"].shape == (1, 320, 4, 5)


@pytest.mark.parametrize(
    "freeze_at, frozen_prefixes", [(0, []), (2, ["conv_stem", "bn1", "blocks.0", "blocks.1"])]
)
def test_efficientnet_freeze_at(freeze_at, frozen_prefixes):
    cfg = small_cfg("build_efficientnet_bifpn_backbone")
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    backbone = BACKBONE_REGISTRY.get("build_efficientnet_backbone")(cfg, ShapeSpec(channels=3))
    frozen = {n for n, p in backbone.body.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in backbone.body.named_parameters() if n.startswith(tuple(frozen_prefixes))}
    assert frozen == expected
    if freeze_at:
        assert "FrozenBatchNorm" in type(backbone.body.bn1).__name__
        assert "FrozenBatchNorm" not in type(backbone.body.blocks[2][0].bn1).__name__


@pytest.mark.parametrize("graph", ["bifpn", "panet"])
@pytest.mark.parametrize("max_level", [5, 8])
def test_bifpn_level_ranges(graph, max_level):
    """Any contiguous range of >= 3 levels within P2-P8, for both graphs. The default top
    block (strided convs from the cells' P5) makes up to 2 levels, so P8 over res2-res5
    takes EfficientDet's (max-pools), and the default says so."""
    cfg = small_cfg("build_resnet_bifpn_backbone")
    cfg.MODEL.BIFPN.GRAPH = graph
    cfg.MODEL.BIFPN.MAX_LEVEL = max_level
    if max_level == 8:
        with pytest.raises(ValueError, match="'p6p7_p5' makes at most 2 level.*use 'efficientdet'"):
            BACKBONE_REGISTRY.get("build_resnet_bifpn_backbone")(cfg, ShapeSpec(channels=3))
        cfg.MODEL.BIFPN.TOP_BLOCK = "efficientdet"
    backbone = BACKBONE_REGISTRY.get("build_resnet_bifpn_backbone")(cfg, ShapeSpec(channels=3))
    outputs = backbone(torch.randn(2, 3, 130, 70))
    assert list(outputs) == [f"p{level}" for level in range(2, max_level + 1)]
    stride = 2**max_level
    assert outputs[f"p{max_level}"].shape[-2:] == (math.ceil(130 / stride), math.ceil(70 / stride))


@pytest.mark.parametrize("name", ["build_resnet_bifpn_backbone", "build_resnet_weighted_fpn_backbone"])
def test_size_divisibility_is_configurable(name):
    """Padding defaults to the last input stride, as Detectron2's FPN (-1); MODEL.FPN.
    SIZE_DIVISIBILITY sets another multiple, or 0 to turn it off."""
    for value, expected in [(-1, 32), (64, 64), (0, 0)]:
        cfg = small_cfg(name)
        cfg.MODEL.FPN.SIZE_DIVISIBILITY = value
        backbone = BACKBONE_REGISTRY.get(name)(cfg, ShapeSpec(channels=3))
        assert backbone.size_divisibility == expected
        assert backbone.padding_constraints == {"size_divisibility": expected}


D2_NORM_NAMES = ["BN", "SyncBN", "naiveSyncBN", "nnSyncBN", "FrozenBN", "GN", "", "NaiveSyncBN"]


@pytest.mark.parametrize("norm", D2_NORM_NAMES, ids=[n or "none" for n in D2_NORM_NAMES])
def test_bifpn_takes_detectron2_norm_names(norm):
    """MODEL.BIFPN.NORM speaks get_norm's vocabulary (and the earlier "NaiveSyncBN")."""
    cfg = small_cfg("build_retinanet_resnet_bifpn_backbone")
    cfg.MODEL.BIFPN.NORM = norm
    check_builder("build_retinanet_resnet_bifpn_backbone", cfg)


def test_fusion_keys_old_and_new():
    """MODEL.BIFPN.FUSE_TYPE (as MODEL.FPN.FUSE_TYPE) and MODEL.FPN.FUSION_EPS set the
    BiFPN's fusion; the earlier MODEL.BIFPN.FUSION / FUSION_EPS are refused, naming the new key."""
    def fusion_of(**keys):
        cfg = small_cfg("build_retinanet_resnet_bifpn_backbone")
        for key, value in keys.items():
            cfg.merge_from_list([key.replace("__", "."), value])
        backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))
        fusion = backbone.cells[0].nodes[0].fusion
        return fusion.method, fusion.eps

    assert fusion_of() == ("fast_normalized", 1e-4)
    assert fusion_of(MODEL__BIFPN__FUSE_TYPE="softmax", MODEL__FPN__FUSION_EPS="0.01") == ("softmax", 0.01)
    with pytest.raises(ValueError, match="MODEL.BIFPN.FUSION was renamed MODEL.BIFPN.FUSE_TYPE; set "
                       "MODEL.BIFPN.FUSE_TYPE 'sum' instead"):
        fusion_of(MODEL__BIFPN__FUSION="sum")
    with pytest.raises(ValueError, match="MODEL.BIFPN.FUSION_EPS was renamed MODEL.FPN.FUSION_EPS"):
        fusion_of(MODEL__BIFPN__FUSION_EPS="0.001")
