"""The EfficientDet meta-architecture: with weights converted from effdet's
``efficientdet_d0`` / ``tf_efficientdet_d0`` (random, with randomised norms and biases) it
gives effdet's class logits, box regressions, detections and losses; its anchors are
effdet's; the converter reports missing and unexpected keys; every shipped D0-D7x config
trains a step at an odd size with a gradient in every parameter."""
import csv
import functools
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest
import torch
from _tiny_models import build_tiny_detector, randomize_norms_and_biases, tiny_efficientdet_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from fvcore.nn import sigmoid_focal_loss

import bifpn_d2
from benchmarks.effdet_training import effdet_target
from bifpn_d2 import EfficientDetAnchorGenerator
from bifpn_d2.convert import (
    COCO_THING_CLASSES,
    box_channel_order,
    convert_effdet_detector,
    convert_effdet_file,
)
from bifpn_d2.export import assert_instances_close
from bifpn_d2.modeling.efficientdet import sparse_focal_loss

try:
    import effdet
except ImportError:  # the setup installs it; without it only the comparisons with it skip
    effdet = None
needs_effdet = pytest.mark.skipif(effdet is None, reason="effdet is not installed")

ROOT = Path(__file__).resolve().parents[1]
D0 = ROOT / "configs/EfficientDet/EfficientDet-D0.yaml"
CONFIGS = sorted((ROOT / "configs/EfficientDet").glob("EfficientDet-D*.yaml"))
BOX_ORDER = box_channel_order(9)  # effdet's (dy, dx, dh, dw) of each anchor, as our (dx, dy, dw, dh)
TOL = 1e-4


def _d0_cfg(effdet_name: str, num_classes: int = 90):
    """Our D0 config as the effdet model ``effdet_name``: TF padding and biases for tf_."""
    tf_port = effdet_name.startswith("tf_")
    cfg = bifpn_d2.add_bifpn_config(get_cfg())
    cfg.merge_from_file(str(D0))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.EFFICIENTNET.NAME = ("tf_" if tf_port else "") + "efficientnet_b0"
    cfg.MODEL.BIFPN.SAME_PADDING = cfg.MODEL.BIFPN.BIAS_BEFORE_NORM = tf_port
    cfg.MODEL.EFFICIENTDET.BIAS_BEFORE_NORM = tf_port
    cfg.MODEL.EFFICIENTDET.NUM_CLASSES = num_classes
    cfg.MODEL.EFFICIENTDET.SCORE_THRESH_TEST = 0.0  # effdet's DetBenchPredict keeps all 100
    return cfg


@functools.lru_cache(maxsize=2)
def _pair(effdet_name: str, size: Tuple[int, int]):
    """effdet's model for ``size`` (its BiFPN and anchors are built for one size) with
    random weights, and ours with the same weights; both in eval mode."""
    torch.manual_seed(0)
    reference = effdet.create_model(effdet_name, pretrained=False, pretrained_backbone=False, image_size=size)
    randomize_norms_and_biases(reference.eval())
    ours = build_model(_d0_cfg(effdet_name)).eval()
    state, missing, unexpected = convert_effdet_detector(reference.state_dict(), ours)
    assert missing == [] and unexpected == []
    ours.load_state_dict(state)
    return reference, ours


def _our_network(model, x: torch.Tensor):
    """Backbone and head on a preprocessed batch: (features, (logits, box regressions))."""
    features = model.backbone(x)
    features = [features[f] for f in model.head_in_features]
    return features, model.head(features)


@needs_effdet
@pytest.mark.parametrize("effdet_name", ["efficientdet_d0", "tf_efficientdet_d0"])
@pytest.mark.parametrize("size", [(256, 384), (255, 329)], ids=["256x384", "odd-255x329"])
def test_outputs_equal_effdet(effdet_name, size):
    """Same preprocessed image, same weights: the same logits and box regressions (box
    channels reordered), also at an odd size (effdet then needs its image_size set to it)."""
    reference, ours = _pair(effdet_name, size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_logits, expected_boxes = reference(x)
        _, (logits, boxes) = _our_network(ours, x)
    assert len(logits) == len(expected_logits) == 5
    assert max(e.abs().max().item() for e in expected_logits) > 3  # spread, not all at the prior
    for actual, expected in zip(logits, expected_logits):
        torch.testing.assert_close(actual, expected, rtol=0, atol=TOL)
    for actual, expected in zip(boxes, expected_boxes):
        torch.testing.assert_close(actual, expected[:, BOX_ORDER], rtol=0, atol=TOL)


@needs_effdet
@pytest.mark.parametrize("effdet_name", ["efficientdet_d0", "tf_efficientdet_d0"])
def test_detections_and_losses_equal_effdet(effdet_name):
    """effdet's DetBenchPredict (top 5000 over all levels, clipping, NMS, top 100) and
    DetBenchTrain (its anchor labeler, focal and Huber losses) against ours. Sizes are
    multiples of 128, where effdet's anchor strides are exact."""
    height, width = size = (256, 384)
    reference, ours = _pair(effdet_name, size)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(2))
    img_info = {"img_scale": torch.ones(1), "img_size": torch.tensor([[width, height]], dtype=torch.float)}
    # Box corners off the anchor centres: effdet skips regression targets that are exactly 0.
    gt_boxes = torch.tensor([[20.3, 30.1, 120.7, 90.6], [150.2, 40.9, 300.1, 220.3],
                             [10.1, 150.3, 60.2, 250.9]])
    gt_classes = torch.tensor([3, 17, 60])
    target = {"bbox": gt_boxes[:, [1, 0, 3, 2]][None], "cls": (gt_classes + 1)[None].float(), **img_info}
    with torch.no_grad():
        expected = effdet.DetBenchPredict(reference)(x, img_info=img_info)[0]
        expected_losses = effdet.DetBenchTrain(reference, create_labeler=True).eval()(x, target)
        images = ImageList(x, [size])
        features, predictions = _our_network(ours, x)
        detections = ours.forward_inference(images, features, predictions)[0]
        instances = Instances(size, gt_boxes=Boxes(gt_boxes), gt_classes=gt_classes)
        with EventStorage():
            losses = ours.forward_training(images, features, ours.head(features), [instances])

    expected = Instances(size, pred_boxes=Boxes(expected[:, :4]), scores=expected[:, 4],
                         pred_classes=expected[:, 5].long() - 1)  # effdet's classes start at 1
    assert len(detections) == 100
    # Boxes in pixels, up to 384; two overlapping candidates whose scores tie up to float
    # rounding (1e-6) may be kept in either order by NMS.
    assert_instances_close(detections, expected, rtol=0, atol=1e-3, score_ties=1e-6)
    torch.testing.assert_close(losses["loss_cls"], expected_losses["class_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["loss_box_reg"], 50 * expected_losses["box_loss"].float(),
                               rtol=1e-5, atol=0)


@needs_effdet
def test_losses_equal_effdet_for_boxes_on_whole_pixels():
    """Boxes on whole pixels, as the built-in dataset draws them: several anchors tie for a
    box's best IoU (effdet's matcher keeps the first, Detectron2's low-quality matching all
    of them), two boxes have the same best anchor (effdet gives it to the first one), and
    regression targets are exactly 0 (effdet does not train them). Our losses are effdet's."""
    size = (256, 384)
    reference, ours = _pair("efficientdet_d0", size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(4))
    gt_boxes = torch.tensor([[16.0, 16.0, 48.0, 48.0],  # centred between 2 x 2 anchor centres
                             [15.0, 15.0, 48.0, 48.0],  # nearly the same box
                             [100.0, 64.0, 228.0, 192.0], [0.0, 0.0, 64.0, 32.0],
                             [200.0, 100.0, 264.0, 228.0]])
    instances = Instances(size, gt_boxes=Boxes(gt_boxes), gt_classes=torch.tensor([1, 2, 3, 4, 5]))
    target = effdet_target([instances], size)
    with torch.no_grad():
        expected = effdet.DetBenchTrain(reference, create_labeler=True).eval()(x, target)
        features, predictions = _our_network(ours, x)
        with EventStorage():
            losses = ours.forward_training(ImageList(x, [size]), features, predictions, [instances])
    torch.testing.assert_close(losses["loss_cls"], expected["class_loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["loss_box_reg"], 50 * expected["box_loss"], rtol=1e-5, atol=0)


@needs_effdet
def test_training_steps_equal_effdet():
    """Training as effdet trains: the same weights, the same batch of two images, norms in
    training mode and drop path with the same random draws (effdet's rate, 0.1). At each of
    four SGD steps (momentum 0.9) effdet's DetBenchTrain and ours give equal losses, equal
    gradients of the total loss (effdet's class + 50 x box) in every parameter, and equal
    weights after the update. Gradients and weights are compared after our converter maps
    effdet's names and box channels onto ours (a linear map: it carries gradients as it
    carries weights). Before each step ours takes effdet's weights again: a randomly
    initialised detector amplifies float rounding (4e-7 in the weights) to 0.3 % in the
    loss within three free-running steps, which would hide what the steps themselves do."""
    size = (256, 384)
    torch.manual_seed(0)
    reference = effdet.create_model("efficientdet_d0", pretrained=False, pretrained_backbone=False,
                                    image_size=size)
    randomize_norms_and_biases(reference)
    cfg = _d0_cfg("efficientdet_d0")
    cfg.MODEL.EFFICIENTNET.DROP_PATH_RATE = 0.1
    ours = build_model(cfg).train()
    bench = effdet.DetBenchTrain(reference, create_labeler=True).train()

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, *size, generator=generator)
    corners = torch.rand(2, 3, 2, generator=generator) * torch.tensor([200.0, 120.0])
    gt_boxes = torch.cat([corners + 3.1, corners + 40.7 + 120 * torch.rand(2, 3, 2, generator=generator)], -1)
    gt_classes = torch.randint(0, 90, (2, 3), generator=generator)
    instances = [Instances(size, gt_boxes=Boxes(b), gt_classes=c) for b, c in zip(gt_boxes, gt_classes)]
    target = effdet_target(instances, size)

    def effdet_as_ours(tensors: dict) -> dict:
        converted, missing, unexpected = convert_effdet_detector(tensors, ours)
        assert missing == [] and unexpected == []
        return converted

    def effdet_gradients() -> dict:
        parameters = dict(reference.named_parameters())
        assert all(p.grad is not None for p in parameters.values())
        return effdet_as_ours({k: parameters[k].grad if k in parameters else v
                               for k, v in reference.state_dict().items()})

    def our_losses() -> dict:
        torch.manual_seed(10)  # the same drop-path draws as effdet's backbone
        features, predictions = _our_network(ours, x)
        with EventStorage():
            return ours.forward_training(ImageList(x, [size] * 2), features, predictions, instances)

    ours.load_state_dict(effdet_as_ours(reference.state_dict()))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (reference, ours)]
    for _ in range(4):
        for optimizer in optimizers:
            optimizer.zero_grad()
        torch.manual_seed(10)
        expected = bench(x, target)
        losses = our_losses()
        # Measured: 3e-7 relative.
        torch.testing.assert_close(losses["loss_cls"], expected["class_loss"], rtol=1e-5, atol=0)
        torch.testing.assert_close(losses["loss_box_reg"], 50 * expected["box_loss"], rtol=1e-5, atol=0)
        expected["loss"].backward()
        sum(losses.values()).backward()
        # Each gradient within 1e-4 of its own largest entry (measured: 4e-6 at most), plus
        # 1e-6 of the model's largest gradient (measured: 3e-7) for the gradients that are
        # zero up to rounding: biases of norms whose output feeds a norm in training mode.
        gradients = effdet_gradients()
        largest = max(g.abs().max().item() for g in gradients.values() if g.is_floating_point())
        for name, p in ours.named_parameters():
            scale = gradients[name].abs().max().item()
            torch.testing.assert_close(p.grad, gradients[name], rtol=0, atol=1e-4 * scale + 1e-6 * largest,
                                       msg=lambda m, name=name: f"{name}: {m}")
        for optimizer in optimizers:
            optimizer.step()
        updated = effdet_as_ours(reference.state_dict())
        for name, p in ours.named_parameters():  # measured: 4e-7 at most
            torch.testing.assert_close(p.detach(), updated[name], rtol=0, atol=2e-6,
                                       msg=lambda m, name=name: f"{name} after the step: {m}")
        ours.load_state_dict(updated)


def test_sparse_focal_loss_equals_fvcore():
    """The focal loss without one-hot targets: fvcore's value and gradient, ignored rows
    left out."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 500, 7, generator=generator) * 4).requires_grad_()
    positives = (torch.tensor([0, 1, 1]), torch.tensor([3, 70, 499]), torch.tensor([2, 0, 6]))
    targets = torch.zeros_like(logits)
    targets[positives] = 1.0
    valid = torch.rand(2, 500, generator=generator) > 0.2
    valid[positives[:2]] = True
    expected = sigmoid_focal_loss(logits[valid], targets[valid], alpha=0.25, gamma=1.5, reduction="sum")
    actual = sparse_focal_loss(logits, positives, valid, alpha=0.25, gamma=1.5)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=0)
    (expected_grad,), (actual_grad,) = (torch.autograd.grad(v, logits) for v in (expected, actual))
    torch.testing.assert_close(actual_grad, expected_grad, rtol=1e-4, atol=1e-6)


@needs_effdet
@pytest.mark.parametrize("anchor_scale", [4.0, 5.0])
def test_anchors_equal_effdet(anchor_scale):
    size = (256, 384)
    expected = effdet.anchors.Anchors(3, 7, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], anchor_scale, size).boxes
    strides = [8, 16, 32, 64, 128]
    generator = EfficientDetAnchorGenerator(strides=strides, anchor_scale=anchor_scale)
    grids = [torch.zeros(1, 1, -(-size[0] // s), -(-size[1] // s)) for s in strides]
    actual = torch.cat([boxes.tensor for boxes in generator(grids)])
    torch.testing.assert_close(actual, expected[:, [1, 0, 3, 2]], rtol=1e-6, atol=1e-4)  # float32 rounding


@needs_effdet
def test_convert_tool_whole_model(tmp_path):
    """An effdet checkpoint file becomes a Detectron2 checkpoint of the D0 config with no
    missing or unexpected key; a config with fewer head repeats gets a report that names
    the keys left over; --coco-80 keeps Detectron2's 80 COCO classes of effdet's 90."""
    reference, _ = _pair("efficientdet_d0", (256, 384))
    bench_state = {"model." + k: v for k, v in reference.state_dict().items()}  # saved from a DetBench
    torch.save({"model": bench_state}, tmp_path / "bench.pth")
    files = [str(tmp_path / "bench.pth"), str(tmp_path / "d2.pth")]
    report = convert_effdet_file(*files, str(D0), ["MODEL.EFFICIENTDET.NUM_CLASSES", "90"])
    assert report.missing == [] and report.unexpected == []

    report = convert_effdet_file(*files, str(D0), ["MODEL.EFFICIENTDET.NUM_CLASSES", "90",
                                                   "MODEL.EFFICIENTDET.NUM_REPEATS", "2"])
    assert report.missing == []
    # The third repeat of both nets: its convs and its norm at every level.
    assert sorted({k.split(".")[1] for k in report.unexpected}) == ["box_net", "class_net"]
    assert all(".convs.2." in k or (".norms." in k and k.split(".")[4] == "2") for k in report.unexpected)

    with pytest.raises(ValueError, match="wrong shape"):  # 90 classes into an 80-class model
        convert_effdet_file(*files, str(D0))
    convert_effdet_file(*files, str(D0), coco_80=True)
    ours = build_model(_d0_cfg("efficientdet_d0", num_classes=80)).eval()
    DetectionCheckpointer(ours).load(files[1])
    x = torch.randn(1, 3, 256, 384)
    with torch.no_grad():
        expected, _ = reference(x)
        _, (logits, _) = _our_network(ours, x)
    channels = [90 * a + k for a in range(9) for k in COCO_THING_CLASSES]
    for actual, reference_logits in zip(logits, expected):
        torch.testing.assert_close(actual, reference_logits[:, channels], rtol=0, atol=TOL)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_trains_one_step_at_odd_size(config):
    """Each shipped EfficientDet config trains one step on a batch of two images of an odd
    size: finite losses and a gradient in every parameter; then infers. D0-D2 as shipped;
    from D3 on (B3-B7 bottom-ups, built in full here) the BiFPN is cut to 32 channels and
    2 cells for time (test_configs builds their full shapes)."""
    cfg = bifpn_d2.add_bifpn_config(get_cfg())
    cfg.merge_from_file(str(config))
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.BIFPN.OUT_CHANNELS > 112:
        cfg.MODEL.BIFPN.OUT_CHANNELS, cfg.MODEL.BIFPN.NUM_CELLS = 32, 2
    # SyncBN in training needs a process group
    cfg.MODEL.EFFICIENTNET.NORM = cfg.MODEL.BIFPN.NORM = cfg.MODEL.EFFICIENTDET.NORM = "BN"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    generator = torch.Generator().manual_seed(0)
    height, width = 97, 131
    boxes = Boxes(torch.tensor([[5.0, 7.0, 60.0, 80.0], [70, 20, 125, 50]]))
    instances = Instances((height, width), gt_boxes=boxes, gt_classes=torch.tensor([0, 41]))
    batch = [{"image": torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8),
              "instances": instances} for _ in range(2)]
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    with torch.no_grad():
        (result,) = model.eval()(batch[:1])
    assert result["instances"].image_size == (height, width)


def test_square_padding():
    """SQUARE_SIZE pads every batch to effdet's fixed square; larger images are refused."""
    cfg = _d0_cfg("efficientdet_d0")
    cfg.MODEL.BIFPN.OUT_CHANNELS, cfg.MODEL.EFFICIENTDET.NUM_REPEATS = 16, 1
    cfg.MODEL.EFFICIENTDET.SQUARE_SIZE = 192
    model = build_model(cfg).eval()
    images = model.preprocess_image([{"image": torch.zeros(3, 100, 150)}, {"image": torch.zeros(3, 120, 90)}])
    assert images.tensor.shape[-2:] == (192, 192) and images.image_sizes == [(100, 150), (120, 90)]
    with pytest.raises(ValueError, match="SQUARE_SIZE"):
        model.preprocess_image([{"image": torch.zeros(3, 100, 200)}])


def test_bad_config_values_are_named():
    cfg = _d0_cfg("efficientdet_d0")
    cfg.MODEL.EFFICIENTDET.IN_FEATURES = ["p2", "p3"]
    with pytest.raises(ValueError, match=r"MODEL.EFFICIENTDET.IN_FEATURES=.*'p2'"):
        build_model(cfg)
    cfg = _d0_cfg("efficientdet_d0")
    cfg.MODEL.EFFICIENTDET.NORM = "batchnorm"
    with pytest.raises(ValueError, match="MODEL.EFFICIENTDET.NORM='batchnorm'"):
        build_model(cfg)



@needs_effdet
def test_comparison_tool_runs(tmp_path):
    """tools/efficientdet_race.py at a smoke size: the size table (parameters) and one race
    round write their tables; parameters equal effdet's. No time is asserted."""
    common = ["--config-root", str(ROOT / "configs"), "--output-dir", str(tmp_path)]
    for args in (["size", "--variants", "D0", "--no-flops"],
                 ["race", "--variants", "D0", "--size", "256", "--batch-sizes", "1", "--threads", "1",
                  "--repeats", "1", "--warmup", "0"]):
        done = subprocess.run([sys.executable, str(ROOT / "tools" / "efficientdet_race.py"), *args, *common],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = read_rows(tmp_path / "size.csv")
    assert float(row["params_ratio"]) == 1.0 and abs(float(row["params_M"]) - 3.88) < 0.01
    rows = read_rows(tmp_path / "race.csv")
    assert [r["phase"] for r in rows] == ["inference", "training step"]
    assert all(float(r["ours / effdet best"]) > 0 for r in rows)
    assert float(rows[0]["output difference (relative)"]) < 1e-4
    assert (tmp_path / "race.md").read_text().startswith("| variant |") and (tmp_path / "size.csv").is_file()
    assert {r["precision"] for r in rows} == {"fp32"} and {r["threads"] for r in rows} == {"1"}


@needs_effdet
def test_race_precision_is_checked():
    """Mixed precision is raced on a GPU only; an unknown precision names the allowed ones."""
    from benchmarks.efficientdet_race import _in_precision, race_rows

    with pytest.raises(ValueError, match="GPU only"):
        race_rows(["D0"], device="cpu", precisions=["amp"])
    with pytest.raises(ValueError, match=r"\('fp32', 'amp'\)"):
        _in_precision(lambda: None, torch.device("cpu"), "bf16")
    assert _in_precision(lambda: 3, torch.device("cpu"), "fp32")() == 3


@needs_effdet
def test_race_compiles_both_detectors_in_the_mode_asked(monkeypatch):
    """``race_rows(compile_mode=...)``: our compiled parts and effdet's network get the same
    ``torch.compile`` mode (e.g. "reduce-overhead", CUDA graphs on a GPU) and static shapes."""
    from benchmarks.efficientdet_race import _Networks, build_pair

    calls = []

    def recording_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    cpu = torch.device("cpu")
    reference, ours = build_pair("D0", "efficientdet_d0", cpu, str(ROOT / "configs"), [256, 256])
    _Networks(reference, ours, cpu).compile("reduce-overhead")
    assert len(calls) == 3, "our backbone and head, effdet's network"
    assert {(c["mode"], c["dynamic"]) for c in calls} == {("reduce-overhead", False)}


@needs_effdet
def test_profile_splits_both_detectors_into_stages():
    """tools/profile_model.py's rows at a smoke size: every stage of ours and effdet's, the
    stage shares of each detector summing to 1, the device named. No time is asserted."""
    from benchmarks.profile import profile_rows

    rows = profile_rows("D0", batch_sizes=[1], repeats=1, warmup=0, config_root=str(ROOT / "configs"),
                        size=(256, 256), device="cpu")
    inference = [r for r in rows if r["phase"] == "inference"]
    assert [r["stage"] for r in inference] == [
        "batching + normalisation", "bottom-up", "neck", "class + box nets", "post-processing", "rescaling",
        "stage sum", "whole"]
    for side in ("ours", "effdet"):
        shares = [r[f"{side} share"] for r in inference if r[f"{side} share"] != "-"]
        assert abs(sum(shares) - 1) < 1e-6
    assert [r["stage"] for r in rows if r["phase"] == "training step"] == ["forward (losses)", "backward",
                                                                          "whole step"]
    assert {r["device"] for r in rows} == {"cpu"} and all(r["ours ms"] > 0 for r in inference)


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@needs_effdet
@pytest.mark.parametrize("variant", ["D0", "D1", "D2", "D3", "D4", "D5", "D6", "D7", "D7x",
                                     "Lite0", "Lite1", "Lite2", "Lite3", "Lite4"])
def test_parameter_counts_equal_effdet(variant):
    """Every config builds exactly as many parameters as effdet's tf_efficientdet_<variant>
    (90 classes, redundant biases, as our config in that flavour). Built on the meta device:
    shapes without memory."""
    from benchmarks.efficientdet_race import _our_config

    name = f"tf_efficientdet_{variant.lower()}"
    cfg = _our_config(variant, effdet.get_efficientdet_config(name), str(ROOT / "configs"))
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        reference = effdet.create_model(name, pretrained=False, pretrained_backbone=False)
        ours = build_model(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(reference) > 3_000_000


@pytest.mark.parametrize("score_thresh", [0.0, 0.033])  # random weights score 0.02-0.07
@pytest.mark.parametrize("topk", [5000, 300])  # more candidates than the 2313 anchors, and fewer
def test_batched_post_processing_equals_the_per_image_loop(score_thresh, topk):
    """Decoding, clipping and NMS of the whole batch at once (the eager path) give every
    image the detections of Detectron2's per-image loop, in the same order; images of
    three sizes, so clipping and anchors differ per image. With fewer candidates than
    anchors, the eager path picks them anchors first (``top_anchor_class_pairs``)."""
    from detectron2.modeling.meta_arch import RetinaNet

    cfg = tiny_efficientdet_cfg()
    cfg.MODEL.EFFICIENTDET.SCORE_THRESH_TEST = score_thresh
    cfg.MODEL.EFFICIENTDET.TOPK_CANDIDATES_TEST = topk
    model = build_tiny_detector("", cfg)
    randomize_norms_and_biases(model)
    generator = torch.Generator().manual_seed(0)
    sizes = [(96, 128), (80, 72), (64, 96)]
    inputs = [{"image": torch.rand(3, h, w, generator=generator) * 255} for h, w in sizes]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        batched = model.forward_inference(images, features, predictions)
        per_image = RetinaNet.forward_inference(model, images, features, predictions)
    assert len(batched) == len(per_image) == 3
    assert sum(len(r) for r in per_image) > 30
    if score_thresh > 0:
        assert any(len(r) < 100 for r in per_image), "the threshold drops candidates"
    for b, p in zip(batched, per_image):
        assert b.image_size == p.image_size
        assert_instances_close(b, p, rtol=0, atol=1e-4)


@pytest.mark.parametrize("k", [1, 7, 40, 64 * 5])
def test_top_anchor_class_pairs_equals_the_top_k_over_all_pairs(k):
    """The k best (anchor, class) logits picked anchors first are the plain top-k's, in its
    order: one batch of 2 images with a few classes far above the rest at some anchors
    (a trained detector's case), several classes of one anchor among the best, and every
    k from 1 to more pairs than anchors."""
    from bifpn_d2.modeling.efficientdet import top_anchor_class_pairs

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 64, 5, generator=generator) - 4.0
    logits[0, 10] += 9.0  # every class of anchor 10 above every other logit of image 0
    logits[1, 3, 2] += 6.0
    logits[1, 50, :3] += 5.0
    values, anchors, classes = top_anchor_class_pairs(logits, k)
    expected_values, expected = logits.flatten(1).topk(k, dim=1)
    assert values.shape == anchors.shape == classes.shape == (2, k)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)
    assert torch.equal(anchors * 5 + classes, expected)


def test_grouped_nms_equals_batched_nms():
    """NMS group by group on a CPU keeps Detectron2's batched_nms's boxes in its order (by
    decreasing score): overlapping boxes in groups with gaps between their ids, a group
    of one box, and no boxes at all."""
    from detectron2.layers import batched_nms

    from bifpn_d2.modeling.efficientdet import grouped_nms

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(600, 2, generator=generator) * 60
    boxes = torch.cat([corners, corners + 8 + torch.rand(600, 2, generator=generator) * 30], dim=1)
    scores = torch.rand(600, generator=generator)
    groups = torch.randint(0, 6, (600,), generator=generator) * 3  # ids 0, 3, ..., 15
    groups[0] = 40
    expected = batched_nms(boxes, scores, groups, 0.5)
    assert 0 < len(expected) < 500, "some boxes are suppressed, some kept"
    assert torch.equal(grouped_nms(boxes, scores, groups, 0.5), expected)
    empty = grouped_nms(boxes[:0], scores[:0], groups[:0], 0.5)
    assert empty.shape == (0,)


@needs_effdet
def test_profile_tool_runs(tmp_path):
    """tools/profile_model.py at a smoke size: every stage of both detectors has a time,
    and the stage shares of each detector add up to 1. No time is asserted."""
    args = ["--size", "256", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0",
            "--output-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "profile_model.py"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = read_rows(tmp_path / "profile.csv")
    inference = [r for r in rows if r["phase"] == "inference"]
    assert [r["stage"] for r in inference] == [
        "batching + normalisation", "bottom-up", "neck", "class + box nets", "post-processing", "rescaling",
        "stage sum", "whole",
    ]
    assert sum(float(r["ours share"]) for r in inference if r["ours share"] != "-") == pytest.approx(1.0)
    training = [r["stage"] for r in rows if r["phase"] == "training step"]
    assert training == ["forward (losses)", "backward", "whole step"]
    assert all(float(r["ours ms"]) > 0 for r in rows if r["stage"] != "backward")


@needs_effdet
@pytest.mark.parametrize(
    "variant, size",
    [("Lite0", (320, 320)), *((f"Lite{i}", (256, 384)) for i in range(5))],
    ids=["Lite0-320", "Lite0-256x384", "Lite1", "Lite2", "Lite3", "Lite4"],
)
def test_lite_outputs_and_detections_equal_effdet(variant, size):
    """EfficientDet-Lite0-4 (ReLU6, sum fusion, TF padding and biases) holding the weights of
    effdet's tf_efficientdet_lite0-4 (randomised norms and biases): the same logits, box
    regressions and detections; Lite0 square and not, Lite1-4 at a size that is not square
    and where effdet's anchors are exact (multiples of 128), so detections compare too."""
    torch.manual_seed(0)
    reference = effdet.create_model(f"tf_efficientdet_{variant.lower()}", pretrained=False,
                                    pretrained_backbone=False, image_size=size)
    randomize_norms_and_biases(reference.eval())
    cfg = bifpn_d2.add_bifpn_config(get_cfg())
    cfg.merge_from_file(str(ROOT / f"configs/EfficientDet/EfficientDet-{variant}.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.EFFICIENTDET.NUM_CLASSES = "cpu", 90
    cfg.MODEL.EFFICIENTNET.NORM = cfg.MODEL.BIFPN.NORM = cfg.MODEL.EFFICIENTDET.NORM = "BN"
    cfg.MODEL.EFFICIENTDET.SCORE_THRESH_TEST = 0.0
    ours = build_model(cfg).eval()
    state, missing, unexpected = convert_effdet_detector(reference.state_dict(), ours)
    assert missing == [] and unexpected == []
    ours.load_state_dict(state)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_logits, expected_boxes = reference(x)
        _, (logits, boxes) = _our_network(ours, x)
        img_info = {"img_scale": torch.ones(1), "img_size": torch.tensor([size[::-1]], dtype=torch.float)}
        expected = effdet.DetBenchPredict(reference)(x, img_info=img_info)[0]
        features, predictions = _our_network(ours, x)
        detections = ours.forward_inference(ImageList(x, [size]), features, predictions)[0]
    assert max(e.abs().max().item() for e in expected_logits) > 3
    for actual, exp in zip(logits, expected_logits):
        torch.testing.assert_close(actual, exp, rtol=0, atol=TOL)
    for actual, exp in zip(boxes, expected_boxes):
        torch.testing.assert_close(actual, exp[:, BOX_ORDER], rtol=0, atol=TOL)
    reference_detections = Instances(size, pred_boxes=Boxes(expected[:, :4]), scores=expected[:, 4],
                                     pred_classes=expected[:, 5].long() - 1)
    if size[0] % 128 == 0 and size[1] % 128 == 0:  # effdet's anchors are exact only then
        assert len(detections) == 100
        assert_instances_close(detections, reference_detections, rtol=0, atol=1e-3)
