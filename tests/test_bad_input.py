"""Bad input: each case is either handled correctly or stopped by an error that names it.

What happens, case by case (asserted below):

- invalid config values: ``ValueError`` naming the key, the bad value and what is allowed;
  unknown keys and values of the wrong type: yacs/Detectron2 errors at merge time;
- a bottom-up that does not produce ``in_features``: ``ValueError`` listing what it does
  produce; one whose forward breaks its own ``output_shape``: ``KeyError`` naming the
  missing feature, or PyTorch's channel-mismatch error;
- tiny (32x32) and elongated (64x1024, 1024x64) images: detection and training work. One
  limit: batch norm in training needs more than one value per channel, and a single
  32x32 image makes the BiFPN's coarsest levels 1x1 (PyTorch's "Expected more than 1
  value per channel when training"; GN with one channel per group too); batches of 2,
  images larger than 2**(L-1) pixels for coarsest level L, FrozenBN, or NaiveSyncBN
  under DDP avoid it;
- NaN/inf pixels: inference runs; the bad image gets no detections (NaN reaches every
  level through the receptive fields, and NaN scores never pass the threshold) and the
  other images of the batch are unaffected. In training the loss is NaN: Detectron2's
  trainer raises ``FloatingPointError`` before the optimizer step (Faster R-CNN raises it
  already in the box head), so weights stay finite; batch-norm running statistics of that
  forward pass are however already NaN, so stop (as the trainer does) rather than resume
  from that model in memory;
- images without annotations: finite losses (all anchors/proposals are background);
- weight files: ``MODEL.EFFICIENTNET.WEIGHTS`` missing, truncated, random bytes, empty or
  of another model: ``ValueError`` naming the key and the file. ``MODEL.WEIGHTS`` goes
  through Detectron2's ``DetectionCheckpointer``: a missing file is an ``AssertionError``
  naming it; a corrupt one raises PyTorch's error (``RuntimeError``, ``UnpicklingError``,
  ``EOFError``), which does not name the file, and leaves that checkpointer unable to load
  again; a readable file with none of the model's keys loads nothing, only logging the
  missing keys, and the model keeps its weights. So the command line checks the file first
  (``check_detectron2_checkpoint``, without running anything from it) and reports one line.
"""
import math
import pathlib
import pickle
import re

import numpy as np
import pytest
import torch
from _tiny_models import TinyBottomUp, build_tiny_backbone, image, tiny_cfg, training_input, training_losses
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from bifpn_d2.checkpoint import check_detectron2_checkpoint
from bifpn_d2.export import raw_inference
from bifpn_d2.modeling import BiFPN, WeightedFPN, build_efficientnet_backbone

RETINA_BIFPN = "build_retinanet_resnet_bifpn_backbone"
RCNN_BIFPN = "build_resnet_bifpn_backbone"
RETINA_FPN = "build_retinanet_resnet_weighted_fpn_backbone"
RCNN_FPN = "build_resnet_weighted_fpn_backbone"
EFFDET = "build_retinanet_efficientnet_bifpn_backbone"
DETECTORS = [RETINA_BIFPN, RCNN_BIFPN, RETINA_FPN, RCNN_FPN]


def _set(cfg: CfgNode, key: str, value) -> None:
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[leaf] = value


# (builder, {key: bad value}, the key named in the error, what the error says is allowed)
INVALID_CONFIGS = [
    (RETINA_BIFPN, {"MODEL.BIFPN.FUSE_TYPE": "fastest"}, "MODEL.BIFPN.FUSE_TYPE", "'fast_normalized'"),
    (RETINA_BIFPN, {"MODEL.BIFPN.NORM": "LayerNorm"}, "MODEL.BIFPN.NORM", "'naiveSyncBN'"),
    (RETINA_BIFPN, {"MODEL.BIFPN.GRAPH": "nasfpn"}, "MODEL.BIFPN.GRAPH", "'panet'"),
    (RETINA_BIFPN, {"MODEL.BIFPN.ACTIVATION": "gelu"}, "MODEL.BIFPN.ACTIVATION", "'swish'"),
    (RETINA_BIFPN, {"MODEL.BIFPN.TOP_BLOCK": "conv"}, "MODEL.BIFPN.TOP_BLOCK", "'p6p7_c5'"),
    (RETINA_BIFPN, {"MODEL.BIFPN.CONV_INIT": "kaiming"}, "MODEL.BIFPN.CONV_INIT", "'c2_xavier'"),
    (RETINA_BIFPN, {"MODEL.BIFPN.TOP_BLOCK": "p6p7_c5", "MODEL.BIFPN.MAX_LEVEL": 8}, "MODEL.BIFPN.MAX_LEVEL",
     "use 'efficientdet'"),
    (RETINA_BIFPN, {"MODEL.BIFPN.TOP_BLOCK": "maxpool"}, "MODEL.BIFPN.TOP_BLOCK", "at most 1 level(s)"),
    (RCNN_FPN, {"MODEL.FPN.TOP_BLOCK": "p7"}, "MODEL.FPN.TOP_BLOCK", "'p6p7_c5'"),
    (RCNN_FPN, {"MODEL.FPN.FUSE_TYPE": "max"}, "MODEL.FPN.FUSE_TYPE", "'softmax'"),
    (RCNN_FPN, {"MODEL.FPN.NORM": "none"}, "MODEL.FPN.NORM", "'FrozenBN'"),
    (EFFDET, {"MODEL.EFFICIENTNET.NAME": "efficientnet_b9"}, "MODEL.EFFICIENTNET.NAME", "'efficientnet_b7'"),
    (EFFDET, {"MODEL.EFFICIENTNET.NORM": "GN"}, "MODEL.EFFICIENTNET.NORM", "'FrozenBN'"),
    (EFFDET, {"MODEL.BACKBONE.FREEZE_AT": 7}, "MODEL.BACKBONE.FREEZE_AT", "[0, 1, 2, 3, 4, 5]"),
    (RETINA_BIFPN, {"MODEL.BIFPN.OUT_CHANNELS": -16}, "MODEL.BIFPN.OUT_CHANNELS",
     "or 0 for MODEL.FPN.OUT_CHANNELS"),
    (RETINA_BIFPN, {"MODEL.BIFPN.OUT_CHANNELS": 0, "MODEL.FPN.OUT_CHANNELS": 0}, "MODEL.FPN.OUT_CHANNELS",
     "integer >= 1"),
    (RETINA_BIFPN, {"MODEL.BIFPN.NUM_CELLS": 0}, "MODEL.BIFPN.NUM_CELLS", "integer >= 1"),
    (RCNN_FPN, {"MODEL.FPN.OUT_CHANNELS": 0}, "MODEL.FPN.OUT_CHANNELS", "integer >= 1"),
    (RETINA_BIFPN, {"MODEL.FPN.SIZE_DIVISIBILITY": -32}, "MODEL.FPN.SIZE_DIVISIBILITY", "0 (no padding)"),
    (RCNN_FPN, {"MODEL.FPN.SIZE_DIVISIBILITY": -2}, "MODEL.FPN.SIZE_DIVISIBILITY",
     "-1 (the stride of the last"),
    # MAX_LEVEL that leaves fewer than 3 levels, or goes beyond P8
    (RETINA_BIFPN, {"MODEL.BIFPN.MAX_LEVEL": 4}, "MODEL.BIFPN.MAX_LEVEL", "[0, 5, 6, 7, 8]"),
    (RETINA_BIFPN, {"MODEL.BIFPN.MAX_LEVEL": 9}, "MODEL.BIFPN.MAX_LEVEL", "[0, 5, 6, 7, 8]"),
    (RETINA_BIFPN, {"MODEL.RESNETS.OUT_FEATURES": ["res4", "res5"], "MODEL.FPN.IN_FEATURES": ["res4", "res5"],
                    "MODEL.BIFPN.MAX_LEVEL": 5}, "MODEL.BIFPN.MAX_LEVEL", "[0, 6, 7, 8]"),
    # IN_FEATURES the bottom-up does not produce, or at non-successive strides
    (RETINA_BIFPN, {"MODEL.FPN.IN_FEATURES": ["res3", "res4", "res6"]}, "MODEL.FPN.IN_FEATURES",
     "produces ['res3', 'res4', 'res5']"),
    (RCNN_FPN, {"MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "c5"]}, "MODEL.FPN.IN_FEATURES",
     "produces ['res2', 'res3', 'res4', 'res5']"),
    (EFFDET, {"MODEL.FPN.IN_FEATURES": ["c3", "c4", "res5"]}, "MODEL.FPN.IN_FEATURES",
     "produces ['c1', 'c2', 'c3', 'c4', 'c5']"),
    (RETINA_BIFPN, {"MODEL.FPN.IN_FEATURES": ["res3", "res5"]}, "MODEL.FPN.IN_FEATURES", "successive powers"),
    (RCNN_FPN, {"MODEL.FPN.IN_FEATURES": ["res2", "res4"]}, "MODEL.FPN.IN_FEATURES", "successive powers"),
    (EFFDET, {"MODEL.FPN.IN_FEATURES": ["c1", "c2", "c3"]}, "MODEL.FPN.IN_FEATURES", "within P2-P8"),
]


@pytest.mark.parametrize("builder,changes,key,allowed", INVALID_CONFIGS,
                         ids=[f"{k}={list(c.values())[-1]}" for _, c, k, _ in INVALID_CONFIGS])
def test_invalid_config_value(builder, changes, key, allowed):
    cfg = tiny_cfg(builder)
    for name, value in changes.items():
        _set(cfg, name, value)
    with pytest.raises(ValueError) as error:
        build_tiny_backbone(builder, cfg)
    message = str(error.value)
    assert f"{key}={changes[key]!r}" in message
    assert allowed in message


def test_unknown_config_key_and_wrong_type():
    """Detectron2 rejects these while merging, before any builder runs."""
    cfg = tiny_cfg(RETINA_BIFPN)
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.BIFPN.FUSON"):
        cfg.merge_from_list(["MODEL.BIFPN.FUSON", "sum"])
    with pytest.raises(ValueError, match="Type mismatch .* MODEL.BIFPN.NUM_CELLS"):
        cfg.merge_from_list(["MODEL.BIFPN.NUM_CELLS", "three"])


@pytest.mark.parametrize("neck", [BiFPN, WeightedFPN])
def test_bottom_up_without_the_in_features(neck):
    expected = r"\['res6'\] not produced .* produces \['res2', 'res3', 'res4', 'res5'\]"
    with pytest.raises(ValueError, match=expected):
        if neck is BiFPN:
            BiFPN(TinyBottomUp(), ["res4", "res5", "res6"], 16, num_cells=1)
        else:
            WeightedFPN(TinyBottomUp(), ["res4", "res5", "res6"], 16)


FEATURES = ["res3", "res4", "res5"]


class _BrokenBottomUp(TinyBottomUp):
    """Declares res2..res5 but returns ``res5`` missing or with the wrong channel count."""

    def __init__(self, fault: str):
        super().__init__()
        self.fault = fault

    def forward(self, x):
        outputs = super().forward(x)
        if self.fault == "missing":
            del outputs["res5"]
        else:
            outputs["res5"] = outputs["res5"][:, :8]
        return outputs


@pytest.mark.parametrize("neck", [BiFPN, WeightedFPN])
def test_bottom_up_breaking_its_output_shape(neck):
    def build(fault):
        if neck is BiFPN:
            return BiFPN(_BrokenBottomUp(fault), FEATURES, 16, num_cells=1).eval()
        return WeightedFPN(_BrokenBottomUp(fault), FEATURES, 16).eval()

    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(KeyError, match="res5"):
        build("missing")(x)
    with pytest.raises(RuntimeError, match="to have 32 channels, but got 8"):
        build("channels")(x)


SMALL_AND_ELONGATED = [(32, 32), (64, 1024), (1024, 64)]


@pytest.mark.parametrize("height,width", SMALL_AND_ELONGATED)
@pytest.mark.parametrize("builder", DETECTORS)
def test_small_and_elongated_images(builder, height, width):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(builder)).eval()
    with torch.no_grad():
        result = model([{"image": image(height, width)}])[0]["instances"]
    assert len(result) > 0
    boxes = result.pred_boxes.tensor
    assert torch.isfinite(boxes).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    model.train()
    losses = training_losses(model, [training_input(height, width, seed=s) for s in range(2)])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()), losses


def test_one_tiny_image_in_training_with_batch_norm():
    """The documented limit: one 32x32 image makes P6/P7 1x1, one value per channel."""
    model = build_model(tiny_cfg(RETINA_BIFPN)).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        training_losses(model, [training_input(32, 32)])
    cfg = tiny_cfg(RETINA_BIFPN)
    cfg.MODEL.BIFPN.NORM = "FrozenBN"
    losses = training_losses(build_model(cfg).train(), [training_input(32, 32)])
    assert all(torch.isfinite(v) for v in losses.values())


def _corrupt(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    x[:, 10:20, 30:40] = value
    return x


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("builder", [RETINA_BIFPN, RCNN_BIFPN])
def test_nan_and_inf_pixels_in_inference(builder, value):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(builder)).eval()
    clean = image(96, 128, seed=3)
    with torch.no_grad():
        bad_result, clean_result = model([{"image": _corrupt(image(96, 128), value)}, {"image": clean}])
        alone = raw_inference(model, [{"image": clean}])[0]
        batch = raw_inference(model, [{"image": _corrupt(image(96, 128), value)}, {"image": clean}])[1]
    assert len(bad_result["instances"]) == 0
    detections = clean_result["instances"]
    assert len(detections) > 0 and torch.isfinite(detections.pred_boxes.tensor).all()
    # the clean image's best detections are those it gets alone (batched kernels round differently)
    torch.testing.assert_close(batch.scores[:5], alone.scores[:5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("builder", [RETINA_BIFPN, RCNN_BIFPN])
def test_nan_and_inf_pixels_in_training(builder, value):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(builder)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bad = training_input(96, 128)
    bad["image"] = _corrupt(bad["image"], value)
    trainer = SimpleTrainer(model, iter([[bad, training_input(96, 128, seed=1)]]),
                            torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.raises(FloatingPointError, match="NaN|Inf"):
        trainer.train(0, 1)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # no step taken


@pytest.mark.parametrize("builder", DETECTORS)
def test_images_without_annotations(builder):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(builder)).train()
    no_boxes = {"gt_boxes": Boxes(torch.zeros(0, 4)), "gt_classes": torch.zeros(0, dtype=torch.int64)}
    empty = Instances((200, 249), **no_boxes)
    losses = training_losses(model, [{"image": image(200, 249), "instances": empty}])
    sum(losses.values()).backward()
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses


def _bad_weight_files(directory, valid: bytes) -> dict:
    """name -> path of a missing, truncated, random-bytes, empty and unrelated weight file."""
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    contents = {"truncated.pth": valid[: len(valid) // 2], "random.pth": noise.numpy().tobytes()}
    contents["empty.pth"] = b""
    paths = {"missing.pth": str(directory / "missing.pth")}
    for name, data in contents.items():
        (directory / name).write_bytes(data)
        paths[name] = str(directory / name)
    torch.save({"fc.weight": torch.zeros(2, 2)}, directory / "unrelated.pth")
    paths["unrelated.pth"] = str(directory / "unrelated.pth")
    return paths


def test_bad_efficientnet_weight_files(tmp_path):
    torch.save({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "valid.pth")
    cfg = tiny_cfg("build_efficientnet_backbone")
    for name, path in _bad_weight_files(tmp_path, (tmp_path / "valid.pth").read_bytes()).items():
        cfg.MODEL.EFFICIENTNET.WEIGHTS = path
        with pytest.raises(ValueError) as error:
            build_efficientnet_backbone(cfg, ShapeSpec(channels=3))
        message = str(error.value)
        assert message.startswith(f"MODEL.EFFICIENTNET.WEIGHTS={path!r}"), name
        reason = {"missing.pth": "does not exist", "unrelated.pth": "missing keys 352"}
        assert reason.get(name, "is not a readable checkpoint") in message, (name, message)


def test_bad_detectron2_weight_files(tmp_path):
    """MODEL.WEIGHTS is Detectron2's business: its checkpointer's behaviour, documented."""
    model = build_model(tiny_cfg(RCNN_FPN))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("valid")
    paths = _bad_weight_files(tmp_path, (tmp_path / "valid.pth").read_bytes())
    # (a checkpointer whose load failed refuses any further load: one per attempt)
    with pytest.raises(AssertionError, match=f"Checkpoint {paths['missing.pth']} not found"):
        DetectionCheckpointer(model).load(paths["missing.pth"])
    for name in ("truncated.pth", "random.pth", "empty.pth"):
        with pytest.raises((RuntimeError, EOFError, pickle.UnpicklingError)):
            DetectionCheckpointer(model).load(paths[name])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert DetectionCheckpointer(model).load(paths["unrelated.pth"]) == {}
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


class _RunsCode:
    """Unpickling this calls ``pathlib.Path.touch``: a stand-in for code in a weight file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_detectron2_weight_files_are_checked_without_running_them(tmp_path):
    model = build_model(tiny_cfg(RCNN_FPN))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("valid")
    check_detectron2_checkpoint(str(tmp_path / "valid.pth"))
    paths = _bad_weight_files(tmp_path, (tmp_path / "valid.pth").read_bytes())
    with pytest.raises(FileNotFoundError):
        check_detectron2_checkpoint(paths.pop("missing.pth"))
    check_detectron2_checkpoint(paths.pop("unrelated.pth"))  # readable: Detectron2 logs missing keys
    for path in paths.values():  # truncated, random bytes, empty
        with pytest.raises(ValueError, match=re.escape(f"weight file '{path}' is not a readable checkpoint")):
            check_detectron2_checkpoint(path)
    # Model-zoo .pkl: numpy arrays are read; a truncated file is refused; a well-formed pickle
    # of other objects is not unpickled (Detectron2 decides when it loads it).
    zoo = tmp_path / "zoo.pkl"
    arrays = {"conv.weight": np.ones((2, 3), np.float32)}
    zoo.write_bytes(pickle.dumps({"model": arrays, "__author__": "model zoo"}))
    check_detectron2_checkpoint(str(zoo))
    (tmp_path / "cut.pkl").write_bytes(zoo.read_bytes()[:40])
    with pytest.raises(ValueError, match="is not a readable pickle"):
        check_detectron2_checkpoint(str(tmp_path / "cut.pkl"))
    (tmp_path / "code.pkl").write_bytes(pickle.dumps({"model": _RunsCode(tmp_path / "ran")}))
    check_detectron2_checkpoint(str(tmp_path / "code.pkl"))
    assert not (tmp_path / "ran").exists()
