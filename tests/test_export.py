"""Export: TorchScript (scripting, tracing), torch.export and ONNX give eager outputs,
also at input sizes other than the one used for export."""
import os
import subprocess
import sys

import onnx
import pytest
import torch
from _tiny_models import (
    EXPORT_BUILDERS,
    build_tiny_backbone,
    build_tiny_detector,
    image,
    spread_scores,
    tiny_cfg,
    tiny_efficientdet_cfg,
)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from PIL import Image
from torch.export import Dim

# (bifpn_d2.export imports detectron2.export, whose patches make ResNet scriptable)
from bifpn_d2.export import (
    assert_instances_close,
    export_and_verify,
    export_onnx,
    export_scripting,
    export_tracing,
    raw_inference,
    run_onnx,
    scripted_instances,
)
from bifpn_d2.export import sample_image as sample_image_of

TOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RETINA_BIFPN = "build_retinanet_resnet_bifpn_backbone"
RETINA_FPN = "build_retinanet_resnet_weighted_fpn_backbone"
RCNN_BIFPN = "build_resnet_bifpn_backbone"
RCNN_FPN = "build_resnet_weighted_fpn_backbone"
EFFDET = "build_retinanet_efficientnet_bifpn_backbone"


def _max_diff(expected: dict, actual: dict) -> float:
    assert list(expected) == list(actual)
    for name in expected:
        assert expected[name].shape == actual[name].shape, name
    return max((expected[k] - actual[k]).abs().max().item() for k in expected)


def _coarsest_level(backbone) -> int:
    return max(s.stride for s in backbone.output_shape().values()).bit_length() - 1


@pytest.mark.parametrize("builder", EXPORT_BUILDERS)
def test_backbone_scripting(builder):
    backbone = build_tiny_backbone(builder)
    scripted = torch.jit.script(backbone)
    for x in (torch.randn(1, 3, 64, 96), torch.randn(2, 3, 75, 50)):
        with torch.no_grad():
            assert _max_diff(backbone(x), scripted(x)) <= TOL


@pytest.mark.parametrize("builder", EXPORT_BUILDERS)
def test_backbone_torch_export_dynamic(builder):
    """Batch, height and width are dynamic. Every level must be at least 2 pixels (a size
    of 1 broadcasts, which torch.export cannot leave symbolic): H, W >= 2**L + 1 for the
    coarsest level L, e.g. 129 for P3-P7."""
    backbone = build_tiny_backbone(builder)
    min_size = 2 ** _coarsest_level(backbone) + 1
    side = {"min": min_size, "max": 4096}
    dims = {0: Dim("batch", max=64), 2: Dim("height", **side), 3: Dim("width", **side)}
    example = (torch.randn(2, 3, 160, 224),)
    exported = torch.export.export(backbone, example, dynamic_shapes={"x": dims}).module()
    for x in (torch.randn(2, 3, 160, 224), torch.randn(1, 3, min_size, 301)):
        with torch.no_grad():
            assert _max_diff(backbone(x), exported(x)) <= TOL


@pytest.mark.parametrize("builder, norm", [(RETINA_BIFPN, "BN"), (RETINA_BIFPN, "LN"), (RCNN_FPN, "BN")])
def test_backbone_onnx_dynamic(builder, norm, tmp_path):
    """LN: the BiFPN's default norm (ChannelLayerNorm), exported as ONNX's LayerNormalization."""
    cfg = tiny_cfg(builder)
    cfg.MODEL.BIFPN.NORM = norm
    backbone = build_tiny_backbone(builder, cfg)
    names = backbone.output_shape()
    path = str(tmp_path / "backbone.onnx")
    axes = {"x": {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in names})
    torch.onnx.export(backbone, (torch.randn(1, 3, 128, 160),), path, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=list(names), dynamic_axes=axes)
    onnx.checker.check_model(path)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for x in (torch.randn(1, 3, 128, 160), torch.randn(2, 3, 99, 211)):
        with torch.no_grad():
            expected = backbone(x)
        actual = dict(zip(names, (torch.from_numpy(o) for o in session.run(None, {"x": x.numpy()}))))
        # onnxruntime's kernels round differently from PyTorch's: a few float32 ulps
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


def _tf_effdet_cfg():
    """EfficientNet-B0 + BiFPN as a TF EfficientDet port: TF "SAME" padding (timm's in the
    bottom-up, ours in the max-pools), whose amounts depend on the input size."""
    cfg = tiny_cfg(EFFDET)
    cfg.MODEL.EFFICIENTNET.NAME = "tf_efficientnet_b0"
    cfg.MODEL.BIFPN.SAME_PADDING = cfg.MODEL.BIFPN.BIAS_BEFORE_NORM = True
    return cfg


# The EfficientDet meta-architecture (its head, anchors and post-processing) on EfficientNet-B0 + BiFPN.
EFFICIENTDET_MODEL = (EFFDET, tiny_efficientdet_cfg)
TRACED = [(RETINA_BIFPN, None), (RETINA_FPN, None), (RCNN_BIFPN, None), (RCNN_FPN, None)]
TRACED += [(EFFDET, _tf_effdet_cfg), EFFICIENTDET_MODEL]
CASE_NAMES = {None: "", _tf_effdet_cfg: "-tf", tiny_efficientdet_cfg: "-EfficientDet"}


@pytest.mark.parametrize("builder,make_cfg", TRACED, ids=[b + CASE_NAMES[c] for b, c in TRACED])
def test_detector_tracing_other_size(builder, make_cfg):
    """Traced at one size, the model runs correctly at others: no size or device is baked in."""
    model = build_tiny_detector(builder, make_cfg() if make_cfg else None)
    traced, adapter = export_tracing(model, image(128, 160))
    for height, width in ((200, 150), (97, 251)):
        x = image(height, width, seed=1)
        with torch.no_grad():
            expected = raw_inference(model, [{"image": x}])[0]
            actual = adapter.outputs_schema(traced(x))
        assert len(expected) > 0  # there are detections to compare
        assert_instances_close(expected, actual, rtol=TOL, atol=TOL)


SCRIPTED = [(RETINA_BIFPN, None), (RCNN_FPN, None), EFFICIENTDET_MODEL]


@pytest.mark.parametrize("builder,make_cfg", SCRIPTED, ids=[b + CASE_NAMES[c] for b, c in SCRIPTED])
def test_detector_scripting(builder, make_cfg):
    model = build_tiny_detector(builder, make_cfg() if make_cfg else None)
    scripted = export_scripting(model)
    for x in (image(128, 160), image(99, 131, seed=1)):
        with torch.no_grad():
            expected = raw_inference(model, [{"image": x}])[0]
            actual = scripted_instances(scripted(({"image": x},))[0], expected.image_size)
        assert len(expected) > 0
        assert_instances_close(expected, actual, rtol=TOL, atol=TOL)


def test_onnx_retinanet_bifpn():
    """Whole RetinaNet-BiFPN (NMS included) in onnxruntime, at the export size and another."""
    model = build_tiny_detector(RETINA_BIFPN)
    spread_scores(model)
    onnx_bytes, adapter = export_onnx(model, image(128, 160))
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
    for x in (image(128, 160), image(200, 150, seed=1)):
        with torch.no_grad():
            expected = raw_inference(model, [{"image": x}])[0]
        actual = adapter.outputs_schema(tuple(run_onnx(onnx_bytes, x)))
        assert len(expected) > 0
        # Boxes are in pixels and, with random weights, up to ~400 wide and partly outside the
        # image. Decoding computes x1 = centre - width / 2, so a coordinate near 0 carries the
        # rounding of a ~400 px width: ~1e-5 of it, up to ~4e-3 px, on a CPU whose kernels round
        # otherwise than onnxruntime's (seen: 1.5e-3 px at x1 = 3.2). rtol alone cannot cover it.
        assert_instances_close(expected, actual, rtol=1e-4, atol=5e-3)


# (format, export method, whether to pass --sample-image)
TOOL_CASES = [("torchscript", "tracing", False), ("onnx", "tracing", True)]
TOOL_CASES.append(("torchscript", "scripting", False))


def _tool(args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_model.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fmt,method,sample_image", TOOL_CASES)
def test_export_model_tool(fmt, method, sample_image, tmp_path):
    """A config + checkpoint is exported, then the file is verified by running it on the
    sample image (a given one, or a synthetic one); the command line does it all once."""
    cfg = tiny_cfg(RETINA_BIFPN)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 192
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    model = build_tiny_detector(RETINA_BIFPN)
    spread_scores(model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    path = None
    if sample_image:
        pixels = image(150, 180).permute(1, 2, 0).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "sample.png")
        path = str(tmp_path / "sample.png")
    expected = str(tmp_path / "out" / ("model.onnx" if fmt == "onnx" else "model.ts"))
    if fmt == "onnx":  # through the command line
        args = ["--config-file", str(tmp_path / "tiny.yaml"), "--format", fmt, "--export-method", method,
                "--output", str(tmp_path / "out"), "--sample-image", path, "MODEL.WEIGHTS",
                str(tmp_path / "model.pth")]
        done = _tool(args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert f"Wrote {expected}" in done.stdout + done.stderr
    else:
        sample = sample_image_of(cfg, path)
        exported = export_and_verify(model.eval(), sample, fmt, method, str(tmp_path / "out"))
        assert exported == expected
    assert os.path.getsize(expected) > 0


def test_export_model_tool_rejects_scripting_to_onnx(tmp_path):
    done = _tool(["--config-file", "x.yaml", "--format", "onnx", "--export-method", "scripting",
                  "--output", str(tmp_path)], timeout=120)
    assert done.returncode == 2 and "scripting supports --format torchscript only" in done.stderr


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_efficientdet_lite0_exports(fmt, tmp_path):
    """The Lite models exist to be exported: EfficientDet-Lite0 as shipped (ReLU6, TF
    padding) traces to TorchScript and to ONNX, whose onnxruntime detections equal
    PyTorch's (export_and_verify compares them)."""
    from bifpn_d2.engine.config import load_config

    torch.manual_seed(0)
    plain_bn = ["MODEL.EFFICIENTNET.NORM", "BN", "MODEL.BIFPN.NORM", "BN", "MODEL.EFFICIENTDET.NORM", "BN"]
    cfg = load_config("EfficientDet/EfficientDet-Lite0.yaml", ["MODEL.DEVICE", "cpu", *plain_bn])
    model = build_model(cfg)
    pixels = torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(0)) * 255
    # Random weights with the norms' initial statistics saturate every ReLU6: the outputs
    # would not depend on the image and every score would tie. Statistics of two batches first.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches seen
    model.train()
    with torch.no_grad():
        for seed in (1, 2):
            x = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(seed)) * 255
            features = model.backbone((x - model.pixel_mean) / model.pixel_std)
            model.head([features[f] for f in model.head_in_features])
    model.eval()
    path = export_and_verify(model, pixels, fmt, "tracing", str(tmp_path))
    assert os.path.getsize(path) > 0


def test_instances_match_up_to_order_and_score_ties_only():
    """Reordered detections match; a swap between two candidates of the same class whose
    scores tie within ``score_ties`` is accepted only when asked for; anything else fails."""
    def instances(boxes, scores, classes):
        return Instances((100, 100), pred_boxes=Boxes(torch.tensor(boxes)), scores=torch.tensor(scores),
                         pred_classes=torch.tensor(classes))

    a = instances([[0.0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.5], [1, 2])
    assert_instances_close(a, instances([[20.0, 20, 40, 40], [0, 0, 10, 10]], [0.5, 0.9], [2, 1]))
    swapped = instances([[0.0, 0, 10, 10], [28, 20, 48, 40]], [0.9, 0.5 + 1e-8], [1, 2])
    with pytest.raises(AssertionError, match="detection 1 .* has no match"):
        assert_instances_close(a, swapped)
    assert_instances_close(a, swapped, score_ties=1e-6)
    for other in (instances([[0.0, 0, 10, 10], [28, 20, 48, 40]], [0.9, 0.51], [1, 2]),  # not a tie
                  instances([[0.0, 0, 10, 10], [28, 20, 48, 40]], [0.9, 0.5], [1, 3])):  # other class
        with pytest.raises(AssertionError, match="has no match"):
            assert_instances_close(a, other, score_ties=1e-6)
