"""Every shipped config loads with ``add_bifpn_config`` and builds its model (a 3x config
builds the same model as its 1x: compared instead of built again); all but the largest also
run inference, and the synthetic-dataset configs one training step; the EfficientDet family
follows the compound-scaling table; every LazyConfig instantiates and builds the same model
as its YAML twin."""

import re
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import bifpn_d2

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
YAML_CONFIGS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
LAZY_CONFIGS = sorted(
    p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "lazy").glob("*.py") if p.name != "common.py"
)
# Built on the meta device (shapes only, no memory, no init cost): too big to run in a test.
HUGE = re.compile(r"EfficientDet-D([3-7]|7x)\.yaml$")
# EfficientDet D0-D7 (REFERENCES.md) and D7x: backbone, image size, BiFPN width, cells, head
# repeats, fusion, anchor scale, coarsest level.
EFFICIENTDET = {
    "D0": ("efficientnet_b0", 512, 64, 3, 3, "fast_normalized", 4.0, 7),
    "D1": ("efficientnet_b1", 640, 88, 4, 3, "fast_normalized", 4.0, 7),
    "D2": ("efficientnet_b2", 768, 112, 5, 3, "fast_normalized", 4.0, 7),
    "D3": ("efficientnet_b3", 896, 160, 6, 4, "fast_normalized", 4.0, 7),
    "D4": ("efficientnet_b4", 1024, 224, 7, 4, "fast_normalized", 4.0, 7),
    "D5": ("efficientnet_b5", 1280, 288, 7, 4, "fast_normalized", 4.0, 7),
    "D6": ("efficientnet_b6", 1280, 384, 8, 5, "sum", 4.0, 7),
    "D7": ("efficientnet_b6", 1536, 384, 8, 5, "sum", 5.0, 7),
    "D7x": ("efficientnet_b7", 1536, 384, 8, 5, "sum", 4.0, 8),
}


def load_yaml(name: str):
    cfg = bifpn_d2.add_bifpn_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_configs_are_found():
    assert len(YAML_CONFIGS) >= 25 and len(LAZY_CONFIGS) >= 2


@pytest.mark.parametrize("name", [n for n in YAML_CONFIGS if not n.endswith("_3x.yaml")])
def test_yaml_config_builds(name):
    cfg = load_yaml(name)
    if HUGE.search(name):
        cfg.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) > 10e6
        return
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # A size that is not a multiple of 32, as most images are.
    with torch.no_grad():
        (result,) = model([{"image": torch.randint(0, 256, (3, 100, 133), dtype=torch.uint8)}])
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        assert result["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 100, 133)
    else:
        assert result["instances"].image_size == (100, 133)


@pytest.mark.parametrize("name", [n for n in YAML_CONFIGS if n.startswith("synthetic/") and "Base-" not in n])
def test_synthetic_config_trains_one_step(name):
    """The configs of the main job and the neck study's pairs: CPU, nothing pretrained or
    frozen, finite losses and a gradient in every parameter of the neck, on two images of
    the tiny split of their own task (boxes, masks or semantic maps), as the loader gives them."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    cfg = load_yaml(name)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.DATASETS.TRAIN[0].startswith("synthetic_shapes_train")
    suffix = cfg.DATASETS.TRAIN[0][len("synthetic_shapes_train"):]
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(f"synthetic_shapes_tiny_train{suffix}")[:2]]
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    neck = [(n, p) for n, p in model.backbone.named_parameters() if not n.startswith("bottom_up.")]
    assert neck and all(p.grad is not None for _, p in neck)


@pytest.mark.parametrize("variant", sorted(EFFICIENTDET))
def test_efficientdet_compound_scaling(variant):
    backbone, size, width, cells, head, fusion, anchor_scale, max_level = EFFICIENTDET[variant]
    cfg = load_yaml(f"EfficientDet/EfficientDet-{variant}.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "EfficientDet"
    assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_efficientnet_bifpn_backbone"
    assert cfg.MODEL.EFFICIENTNET.NAME == backbone
    assert cfg.MODEL.EFFICIENTNET.DROP_PATH_RATE == 0.2
    assert (cfg.MODEL.BIFPN.OUT_CHANNELS, cfg.MODEL.BIFPN.NUM_CELLS, cfg.MODEL.BIFPN.FUSE_TYPE) == (
        width,
        cells,
        fusion,
    )
    assert cfg.MODEL.EFFICIENTDET.NUM_REPEATS == head
    assert cfg.MODEL.EFFICIENTDET.ANCHOR_SCALE == anchor_scale
    assert cfg.MODEL.BIFPN.MAX_LEVEL in (0, max_level)
    assert cfg.MODEL.EFFICIENTDET.IN_FEATURES == [f"p{level}" for level in range(3, max_level + 1)]
    assert cfg.INPUT.MIN_SIZE_TRAIN == (size,) and cfg.INPUT.MAX_SIZE_TRAIN == size
    assert cfg.INPUT.MIN_SIZE_TEST == size and cfg.INPUT.MAX_SIZE_TEST == size
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.FPN.IN_FEATURES) == ["c3", "c4", "c5"]
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53] and cfg.MODEL.PIXEL_STD == [
        58.395,
        57.12,
        57.375,
    ]


@pytest.mark.parametrize(
    "schedule, steps, max_iter", [("1x", (60000, 80000), 90000), ("3x", (210000, 250000), 270000)]
)
@pytest.mark.parametrize("arch, lr", [("RetinaNet", 0.01), ("FasterRCNN", 0.02)])
@pytest.mark.parametrize("neck, builder", [("WeightedFPN", "weighted_fpn"), ("BiFPN", "bifpn")])
def test_model_zoo_schedules(schedule, steps, max_iter, arch, lr, neck, builder):
    cfg = load_yaml(f"COCO-Detection/{arch}-R50-{neck}_{schedule}.yaml")
    prefix = "build_retinanet_resnet_" if arch == "RetinaNet" else "build_resnet_"
    assert cfg.MODEL.BACKBONE.NAME == f"{prefix}{builder}_backbone"
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert (cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == (steps, max_iter)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, lr)
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("coco_2017_train",), ("coco_2017_val",))
    if schedule == "3x":  # the same model as 1x (built by test_yaml_config_builds)
        assert cfg.MODEL == load_yaml(f"COCO-Detection/{arch}-R50-{neck}_1x.yaml").MODEL


@pytest.mark.parametrize("name", LAZY_CONFIGS)
def test_lazy_config_instantiates(name):
    cfg = LazyConfig.load(str(CONFIGS / name))
    model = instantiate(cfg.model).eval()
    width = model.backbone.output_shape()["p3"].channels
    if "EfficientDet" in name:  # separable convs; the width is derived, not written twice
        convs = [c.pointwise for c in model.head.class_net.convs]
        assert len(convs) == cfg.model.head.num_repeats
    else:
        convs = [m for m in model.head.cls_subnet if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == len(cfg.model.head.conv_dims)
        assert model.head.cls_score.in_channels == width
    assert [(c.in_channels, c.out_channels) for c in convs] == [(width, width)] * len(convs)
    cfg.optimizer.params.model = model
    assert instantiate(cfg.optimizer).param_groups
    assert instantiate(cfg.lr_multiplier)(0.5) > 0
    with torch.no_grad():
        (result,) = model([{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)}])
    assert result["instances"].image_size == (96, 128)


@pytest.mark.parametrize(
    "lazy, yaml",
    [
        ("RetinaNet-R50-BiFPN_1x.py", "COCO-Detection/RetinaNet-R50-BiFPN_1x.yaml"),
        ("EfficientDet-D0.py", "EfficientDet/EfficientDet-D0.yaml"),
    ],
)
def test_lazy_config_matches_yaml_twin(lazy, yaml):
    lazy_model = instantiate(LazyConfig.load(str(CONFIGS / "lazy" / lazy)).model)
    yaml_model = build_model(load_yaml(yaml))
    lazy_shapes = {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()}
    yaml_shapes = {k: tuple(v.shape) for k, v in yaml_model.state_dict().items()}
    assert lazy_shapes == yaml_shapes


@pytest.mark.parametrize("pair", ["retinanet", "faster_rcnn", "mask_rcnn", "semantic_fpn"])
def test_synthetic_bifpn_config_is_the_neck_study_result(pair):
    """Each pair's shipped BiFPN, as its config and as the switch of its FPN config
    (MODEL.BACKBONE.NAME alone, as the main job does), is the study arm it ships: its
    MODEL.BIFPN equals the config with every studied key set from SHIPPED_RECIPES."""
    from benchmarks.neck_study import ARMS, PAIRS, RECIPES_VARIED, SHIPPED_RECIPES
    from bifpn_d2.engine.config import load_config
    from bifpn_d2.modeling import bifpn_switch

    root = Path(__file__).resolve().parents[1]
    fpn_config, bifpn_config = (str(root / c) for c in (PAIRS[pair].fpn_config, PAIRS[pair].bifpn_config))
    recipe = SHIPPED_RECIPES[pair]
    shipped = load_config(bifpn_config)
    studied = dict(recipe)
    if pair == "semantic_fpn":  # its pyramid stops at P5, the last input: no top block to set
        assert shipped.MODEL.BIFPN.MAX_LEVEL == 0 and shipped.MODEL.SEM_SEG_HEAD.IN_FEATURES[-1] == "p5"
        del studied["MODEL.BIFPN.TOP_BLOCK"]
    opts = [item for key_value in studied.items() for item in key_value]
    assert load_config(bifpn_config, opts).MODEL.BIFPN == shipped.MODEL.BIFPN
    switch = bifpn_switch(load_config(fpn_config).MODEL.BACKBONE.NAME)
    switched = load_config(fpn_config, ["MODEL.BACKBONE.NAME", switch])
    assert switched.MODEL.BIFPN == shipped.MODEL.BIFPN
    arms = {arm.key: arm.overrides for arm in ARMS}
    shipped_arm = {"retinanet": "norm_ln_top_p6p7_c5_after", "faster_rcnn": "norm_ln_top_p6p7_p5_cells1_w152",
                   "mask_rcnn": "recipe_fusion_input2",
                   "semantic_fpn": "recipe_neck_warmup200_fusion_input2"}[pair]
    assert arms[f"{pair}/{shipped_arm}"] == recipe
    # the arms that vary the pair's recipe vary it by one key (the last arm: two of them together)
    varied = RECIPES_VARIED[pair]
    for warmup in ("0", "200"):
        assert arms[f"{pair}/recipe_neck_warmup{warmup}"] == {**varied, "MODEL.BIFPN.WARMUP_ITERS": warmup}
    assert arms[f"{pair}/recipe_fusion_input2"] == {**varied, "MODEL.BIFPN.FUSION_INPUT_WEIGHT": "2.0"}
    assert arms[f"{pair}/recipe_neck_warmup200_fusion_input2"] == {
        **varied, "MODEL.BIFPN.WARMUP_ITERS": "200", "MODEL.BIFPN.FUSION_INPUT_WEIGHT": "2.0"}
    # semantic FPN's dev split took the neck's own 200-iteration warmup, the others keep the
    # solver's; Mask R-CNN's and semantic FPN's took the own-level input started at twice the
    # weight, the others start at the equal split (the study: docs/study.md)
    assert shipped.MODEL.BIFPN.WARMUP_ITERS == (200 if pair == "semantic_fpn" else -1)
    assert shipped.MODEL.BIFPN.FUSION_INPUT_WEIGHT == (2.0 if pair in ("mask_rcnn", "semantic_fpn") else 1.0)
    # the dev splits chose LN and P6/P7 after the cells: RetinaNet's from C5 (the FPN's), R-CNN's
    # P6 from the cells' P5
    top = {"retinanet": "p6p7_c5_after", "faster_rcnn": "p6p7_p5", "mask_rcnn": "p6p7_p5"}
    if pair != "semantic_fpn":
        assert shipped.MODEL.BIFPN.NORM == "LN" and shipped.MODEL.BIFPN.TOP_BLOCK == top[pair]
    assert shipped.MODEL.BIFPN.RESIDUAL
    # Faster R-CNN's and semantic FPN's dev splits chose one cell; Mask R-CNN, whose base config
    # inherits Faster R-CNN's, keeps 3
    assert shipped.MODEL.BIFPN.NUM_CELLS == (1 if pair in ("faster_rcnn", "semantic_fpn") else 3)
    # and both spent the GFLOPs one cell saves on width; the others keep the FPN's 128
    assert shipped.MODEL.BIFPN.OUT_CHANNELS == {"faster_rcnn": 152, "semantic_fpn": 192}.get(pair, 128)
