"""Drop-in exactness with Detectron2's own model zoo (the configs installed with Detectron2,
loaded with ``detectron2.model_zoo``; random weights, nothing downloaded).

- Parity: Detectron2's R50-FPN RetinaNet, Faster R-CNN and Mask R-CNN configs with our
  FPN (``FUSE_TYPE sum``, Detectron2's parameter names) and Detectron2's state dict give
  Detectron2's detections exactly, at image sizes that are not multiples of 32.
- YAML: every FPN meta-architecture of the model zoo takes our BiFPN and our weighted FPN
  (fast normalized fusion) by ``MODEL.BACKBONE.NAME`` alone, and meets Detectron2's own
  end-to-end expectations (``tests/modeling/test_model_e2e.py`` there): a training step
  with an image without annotations (200x250 and 200x249), a gradient in every trainable
  parameter (``find_unused_parameters``' criterion), inference at two odd sizes on the
  CPU, NaN and inf images, ``flop_count_operators``.
- LazyConfig: ``common/models/*.py`` take our necks with one line
  (:mod:`bifpn_d2.lazy`), FCOS included, which also gets the end-to-end checks.

Only the heads' sampling is made smaller for time (proposals, RoIs per image, detections
per image): the models are the model zoo's R50 models.
"""
import copy
import math
from typing import Dict, List

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg, instantiate
from detectron2.engine import SimpleTrainer
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import PanopticFPN, SemanticSegmentor, build_model
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints
from detectron2.utils.analysis import flop_count_operators
from omegaconf import DictConfig

import bifpn_d2
from bifpn_d2 import BiFPN, WeightedFPN
from bifpn_d2.lazy import use_bifpn, use_weighted_fpn

YAML_ZOO = {
    "retinanet": "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "faster_rcnn": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "mask_rcnn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "keypoint_rcnn": "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "panoptic_fpn": "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "semantic_fpn": "Misc/semantic_R_50_FPN_1x.yaml",
    "cascade_mask_rcnn": "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
}
# LazyConfig model files (common/models/<name>.py) and the levels of their FPN.
LAZY_ZOO = {"retinanet": (3, 7), "mask_rcnn_fpn": (2, 6), "fcos": (3, 7), "panoptic_fpn": (2, 6),
            "keypoint_rcnn_fpn": (2, 6), "cascade_rcnn": (2, 6)}
NECKS = {"bifpn": BiFPN, "weighted_fpn": WeightedFPN}
LAZY_HELPERS = {"bifpn": use_bifpn, "weighted_fpn": use_weighted_fpn}
PARITY_SIZES = [(480, 641), (427, 563)]
ODD_SIZES = [(131, 197), (150, 223)]


def zoo_cfg(path: str, neck: str = ""):
    """A model-zoo YAML config on the CPU without weights; with ``neck``, only
    ``MODEL.BACKBONE.NAME`` switched to our builder of the same flavour (and our FPN's
    fusion set to fast normalized, our FPN otherwise being Detectron2's)."""
    cfg = bifpn_d2.add_bifpn_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file(path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if neck:
        flavour = "retinanet_" if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else ""
        cfg.MODEL.BACKBONE.NAME = f"build_{flavour}resnet_{neck}_backbone"
    if neck == "weighted_fpn":
        cfg.MODEL.FPN.FUSE_TYPE = "fast_normalized"
    return cfg


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed)).float()


# --- 1. Detectron2's detections, exactly, at sizes that are not multiples of 32

def record_outputs(model: torch.nn.Module) -> Dict[str, object]:
    """What the backbone and the proposal generator (if any) return, on each forward."""
    outputs: Dict[str, object] = {}
    for name in ("backbone", "proposal_generator"):
        module = getattr(model, name, None)
        if module is not None:
            module.register_forward_hook(lambda m, i, out, name=name: outputs.update({name: out}))
    return outputs


def calibrate_frozen_norms(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every FrozenBN's statistics to those of its input on image ``x``, as a
    data-dependent init does. With random weights and FrozenBN's identity statistics, R50
    activations blow up: every score is 1.0 and nearly every box degenerate (1-2
    detections, 2 proposals); calibrated, the heads give 1000 proposals and 100 detections
    to compare."""

    def set_statistics(norm: FrozenBatchNorm2d, inputs) -> None:
        norm.running_mean.copy_(inputs[0].mean(dim=(0, 2, 3)))
        norm.running_var.copy_(inputs[0].var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_statistics) for m in model.modules()
             if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model([{"image": x}])
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("name", ["retinanet", "faster_rcnn", "mask_rcnn"])
def test_model_zoo_checkpoint_gives_detectron2_detections(name):
    reference_cfg, cfg = zoo_cfg(YAML_ZOO[name]), zoo_cfg(YAML_ZOO[name], "weighted_fpn")
    cfg.MODEL.FPN.FUSE_TYPE = "sum"  # Detectron2's FPN: its checkpoints load
    for c in (reference_cfg, cfg):  # a random head scores every anchor near its prior, 0.01 < 0.05
        c.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    reference = build_model(reference_cfg).eval()
    calibrate_frozen_norms(reference, image(160, 224, seed=1))
    ours = build_model(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert ours.backbone.padding_constraints == {"size_divisibility": reference.backbone.size_divisibility}
    expected_inside, actual_inside = record_outputs(reference), record_outputs(ours)
    for height, width in PARITY_SIZES:
        x = [{"image": image(height, width, seed=height)}]
        with torch.no_grad():
            expected, actual = reference(x)[0]["instances"], ours(x)[0]["instances"]
        # Every pyramid level, and for R-CNN the 1000 proposals, are Detectron2's too.
        for level, feature in expected_inside["backbone"].items():
            torch.testing.assert_close(actual_inside["backbone"][level], feature, rtol=0, atol=0)
        if "proposal_generator" in expected_inside:
            (want,), (got,) = expected_inside["proposal_generator"][0], actual_inside["proposal_generator"][0]
            assert len(got) == len(want) > 0
            assert torch.equal(got.proposal_boxes.tensor, want.proposal_boxes.tensor)
            assert torch.equal(got.objectness_logits, want.objectness_logits)
        assert len(actual) == len(expected) == cfg.TEST.DETECTIONS_PER_IMAGE, (height, width)
        assert torch.equal(actual.pred_classes, expected.pred_classes)
        torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=0)
        torch.testing.assert_close(actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0)
        if expected.has("pred_masks"):
            assert torch.equal(actual.pred_masks, expected.pred_masks)


def test_padding_can_be_turned_off_where_the_head_allows():
    cfg = zoo_cfg(YAML_ZOO["retinanet"], "bifpn")
    cfg.MODEL.FPN.SIZE_DIVISIBILITY = 0
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64  # small: only padding matters
    model = build_model(cfg).eval()
    assert model.backbone.padding_constraints == {"size_divisibility": 0}
    with torch.no_grad():
        (result,) = model([{"image": image(*ODD_SIZES[0])}])
    assert result["instances"].image_size == ODD_SIZES[0]


# --- 2. Every FPN meta-architecture, by the backbone name alone (and FCOS by LazyConfig)

def _smaller_sampling_yaml(cfg) -> None:
    """Fewer proposals, sampled RoIs and detections (heads' sampling only) for time."""
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.TEST.DETECTIONS_PER_IMAGE = 10


def _smaller_sampling_lazy(model: DictConfig) -> None:
    """The same for a LazyConfig model."""
    if "proposal_generator" in model:
        model.proposal_generator.pre_nms_topk = (200, 200)
        model.proposal_generator.post_nms_topk = (50, 50)
        model.roi_heads.batch_size_per_image = 16
        predictors = model.roi_heads.get("box_predictors") or [model.roi_heads.box_predictor]
        for predictor in predictors:
            predictor.test_topk_per_image = 10
    else:
        model.max_detections_per_image = 10


def build_switched(source: str, neck: str) -> torch.nn.Module:
    """A model-zoo model (YAML name, or ``lazy:<file>``) with our ``neck``, in training mode."""
    torch.manual_seed(0)
    if source.startswith("lazy:"):
        model_cfg = model_zoo.get_config(f"common/models/{source[5:]}.py").model
        LAZY_HELPERS[neck](model_cfg)
        _smaller_sampling_lazy(model_cfg)
        return instantiate(model_cfg).train()
    cfg = zoo_cfg(YAML_ZOO[source], neck)
    _smaller_sampling_yaml(cfg)
    return build_model(cfg).train()


def training_sample(model: torch.nn.Module, height: int, width: int, num_objects: int, seed: int) -> dict:
    """An image with ``num_objects`` random objects annotated as the model's heads need:
    boxes and classes, masks, keypoints, and a semantic segmentation."""
    generator = torch.Generator().manual_seed(seed)
    sample = {"image": image(height, width, seed)}
    if isinstance(model, (SemanticSegmentor, PanopticFPN)):
        num_classes = model.sem_seg_head.predictor.out_channels
        sample["sem_seg"] = torch.randint(0, num_classes, (height, width), generator=generator)
    if isinstance(model, SemanticSegmentor):
        return sample
    size = torch.tensor([width, height])
    corner = torch.rand(num_objects, 2, generator=generator) * size / 2
    extent = (torch.rand(num_objects, 2, generator=generator) * 0.4 + 0.2) * size
    instances = Instances((height, width), gt_boxes=Boxes(torch.cat([corner, corner + extent], dim=1)),
                          gt_classes=torch.zeros(num_objects, dtype=torch.int64))
    roi_heads = getattr(model, "roi_heads", None)
    if getattr(roi_heads, "mask_on", False):
        instances.gt_masks = BitMasks(torch.rand(num_objects, height, width, generator=generator) > 0.5)
    if getattr(roi_heads, "keypoint_on", False):
        points = torch.rand(num_objects, 17, 3, generator=generator)
        points[..., :2] = corner[:, None] + points[..., :2] * extent[:, None]
        points[..., 2] = 2  # visible
        instances.gt_keypoints = Keypoints(points)
    sample["instances"] = instances
    return sample


def _output_size(output: Dict) -> List[tuple]:
    sizes = [tuple(output["sem_seg"].shape[-2:])] if "sem_seg" in output else []
    if "instances" in output:
        sizes.append(output["instances"].image_size)
    if "panoptic_seg" in output:
        sizes.append(tuple(output["panoptic_seg"][0].shape))
    return sizes


E2E_MODELS = list(YAML_ZOO) + ["lazy:fcos"]


@pytest.mark.parametrize("neck", list(NECKS))
@pytest.mark.parametrize("source", E2E_MODELS)
def test_model_zoo_meta_architecture_takes_our_neck(source, neck):
    model = build_switched(source, neck)
    assert type(model.backbone) is NECKS[neck]
    # Detectron2's half-empty batch: 200x250 without annotations, 200x249 with one object.
    batch = [training_sample(model, 200, 250, 0, seed=0), training_sample(model, 200, 249, 1, seed=1)]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items() if not n.startswith("backbone.bottom_up")}
    SimpleTrainer(model, iter([batch]), torch.optim.SGD(model.parameters(), lr=0.01)).train(0, 1)
    # What find_unused_parameters reports (it clears the gradients a step needs): none.
    assert [n for n, p in trainable.items() if p.grad is None] == []
    assert any(not torch.equal(trainable[n], p) for n, p in before.items())  # the neck trained

    model.eval()
    with torch.no_grad():
        for height, width in ODD_SIZES:
            (output,) = model([{"image": image(height, width, seed=height)}])
            assert set(_output_size(output)) == {(height, width)}
        broken = model([{"image": torch.full((3, 96, 128), value)} for value in (math.nan, math.inf)])
    for output in broken:  # nothing finite comes out of a NaN or inf image
        if "instances" in output:
            assert not torch.isfinite(output["instances"].pred_boxes.tensor).all(dim=1).any()
    flops = flop_count_operators(model, [{"image": image(*ODD_SIZES[0])}])
    assert sum(flops.values()) > 1.0  # GFLOPs


# --- 2b. The LazyConfig model zoo, one line each

@pytest.mark.parametrize("neck", list(NECKS))
@pytest.mark.parametrize("name", list(LAZY_ZOO))
def test_lazy_model_zoo_takes_our_neck(name, neck):
    model_cfg = model_zoo.get_config(f"common/models/{name}.py").model
    bottom_up = copy.deepcopy(model_cfg.backbone.bottom_up)
    LAZY_HELPERS[neck](model_cfg)
    assert model_cfg.backbone.bottom_up == bottom_up
    _smaller_sampling_lazy(model_cfg)
    torch.manual_seed(0)
    model = instantiate(model_cfg).eval()
    assert type(model.backbone) is NECKS[neck]
    first, last = LAZY_ZOO[name]
    assert model.backbone.output_shape() == {f"p{k}": ShapeSpec(channels=256, stride=2**k) for k in
                                             range(first, last + 1)}
    assert model.backbone.size_divisibility == 32
    with torch.no_grad():
        (output,) = model([{"image": image(*ODD_SIZES[1])}])
    assert set(_output_size(output)) == {ODD_SIZES[1]}


# Top blocks: P6-P7 from C5, P6 by max-pool, P6-P7 from P5.
@pytest.mark.parametrize("name", ["retinanet", "mask_rcnn_fpn", "fcos"])
def test_lazy_weighted_fpn_with_sum_is_detectron2_fpn(name):
    model_cfg = model_zoo.get_config(f"common/models/{name}.py").model
    torch.manual_seed(0)
    reference = instantiate(model_cfg.backbone).eval()
    use_weighted_fpn(model_cfg, fuse_type="sum")
    ours = instantiate(model_cfg.backbone).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = image(*ODD_SIZES[0])[None]
    x = torch.nn.functional.pad(x, (0, 224 - x.shape[-1], 0, 160 - x.shape[-2]))  # as Detectron2 pads it
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert list(actual) == list(expected)
    for level in expected:
        torch.testing.assert_close(actual[level], expected[level], rtol=0, atol=0)


def test_lazy_bifpn_takes_the_yaml_defaults_and_options():
    model_cfg = model_zoo.get_config("common/models/fcos.py").model
    use_bifpn(model_cfg, num_cells=2)
    yaml_defaults = bifpn_d2.add_bifpn_config(get_cfg()).MODEL.BIFPN
    assert model_cfg.backbone.num_cells == 2 and model_cfg.backbone.style.norm == yaml_defaults.NORM
    assert model_cfg.backbone.extra_levels == 2  # FCOS's P6-P7 from P5, made after the cells
    backbone = instantiate(model_cfg.backbone)
    assert len(backbone.cells) == 2 and backbone.top_block.in_feature == "p5"
    assert type(backbone.cells[0].nodes[0].conv.norm).__name__ == "ChannelLayerNorm"
    # RetinaNet's P6/P7 read res5: the BiFPN's read it too, joined after the cells (the study's choice)
    model_cfg = model_zoo.get_config("common/models/retinanet.py").model
    use_bifpn(model_cfg, num_cells=2)
    backbone = instantiate(model_cfg.backbone)
    assert backbone.top_block.in_feature == "res5" and backbone.top_after_cells


def test_lazy_helpers_refuse_what_they_cannot_translate():
    model_cfg = model_zoo.get_config("common/models/retinanet.py").model
    model_cfg.backbone.square_pad = 1024
    with pytest.raises(ValueError, match="square_pad=1024"):
        use_bifpn(model_cfg)
    model_cfg = model_zoo.get_config("common/models/mask_rcnn_c4.py").model
    with pytest.raises(ValueError, match="replaces a LazyCall of Detectron2's FPN"):
        use_weighted_fpn(model_cfg)
