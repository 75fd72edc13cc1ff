"""Checkpoints: exact save/load round trips, EfficientNet ImageNet weights loaded through
timm from the files timm users have, and the weight conversion of
:mod:`bifpn_d2.convert` (and its command line, tools/convert_weights.py) on timm,
torchvision and effdet checkpoints that the tests create (random weights)."""
import importlib.util
import os
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from _tiny_models import build_tiny_detector, image, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from bifpn_d2.convert import convert_effdet_file, convert_efficientnet_file
from bifpn_d2.export import raw_inference
from bifpn_d2.modeling import EfficientNetBackbone, build_efficientnet_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUND_TRIP = ["build_retinanet_resnet_bifpn_backbone", "build_resnet_weighted_fpn_backbone"]


def _randomize_norms(model: torch.nn.Module) -> None:
    """Non-trivial batch-norm statistics, so that a mis-assigned tensor changes outputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t, low, high in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                                     (m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2)):
                    t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)


def _detections(model, x):
    with torch.no_grad():
        r = raw_inference(model, [{"image": x}])[0]
    return [r.pred_boxes.tensor, r.scores, r.pred_classes]


def _assert_same_outputs(a, b, x):
    """Bit-identical backbone features and detections."""
    with torch.no_grad():
        fa, fb = (m.backbone(m.preprocess_image([{"image": x}]).tensor) for m in (a, b))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert all(torch.equal(u, v) for u, v in zip(_detections(a, x), _detections(b, x)))


@pytest.mark.parametrize("builder", ROUND_TRIP)
def test_state_dict_round_trip(builder, tmp_path):
    model = build_tiny_detector(builder, seed=0)
    _randomize_norms(model)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    other = build_tiny_detector(builder, seed=1)
    other.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    _assert_same_outputs(model, other, image(100, 140))


@pytest.mark.parametrize("builder", ROUND_TRIP)
def test_detection_checkpointer_round_trip(builder, tmp_path):
    model = build_tiny_detector(builder, seed=0)
    _randomize_norms(model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final", iteration=7)
    other = build_tiny_detector(builder, seed=1)
    checkpointer = DetectionCheckpointer(other, save_dir=str(tmp_path))
    assert checkpointer.has_checkpoint()
    extra = checkpointer.resume_or_load("ignored.pth", resume=True)  # resumes model_final.pth
    assert extra["iteration"] == 7
    _assert_same_outputs(model, other.eval(), image(100, 140))


def _stride32_body(timm_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """c5 of a timm classification EfficientNet, computed without our wrapper."""
    x = timm_model.bn1(timm_model.conv_stem(x))
    for block in timm_model.blocks:
        x = block(x)
    return x


def _our_efficientnet(weights: str):
    cfg = tiny_cfg("build_efficientnet_backbone")
    cfg.MODEL.EFFICIENTNET.WEIGHTS = weights
    return build_efficientnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def _timm_weight_files(directory, state):
    """The formats timm users have: a .pth state dict with the classifier, a .safetensors
    one without it, and a timm training checkpoint (``module.`` prefixes, ``args`` as an
    ``argparse.Namespace``, an EMA copy, which timm prefers)."""
    import argparse

    from safetensors.torch import save_file

    body = {k: v for k, v in state.items() if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    torch.save(state, directory / "b0.pth")
    save_file({k: v.contiguous() for k, v in body.items()}, str(directory / "b0.safetensors"))
    stale = {f"module.{k}": torch.zeros_like(v) for k, v in state.items()}
    ema = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 3, "arch": "efficientnet_b0", "state_dict": stale, "state_dict_ema": ema,
                "args": argparse.Namespace(lr=0.1)}, directory / "b0.pth.tar")
    return ["b0.pth", "b0.safetensors", "b0.pth.tar"]


def test_efficientnet_weights_through_timm(tmp_path):
    """MODEL.EFFICIENTNET.WEIGHTS loads through timm's pretrained mechanism (the file as the
    pretrained source), in every format, also when only the first stages are built; another
    size's weights are refused with the keys listed."""
    torch.manual_seed(0)
    source = timm.create_model("efficientnet_b0", pretrained=False).eval()
    _randomize_norms(source)
    expected = source.state_dict()
    for name in _timm_weight_files(tmp_path, expected):
        path = str(tmp_path / name)
        ours = _our_efficientnet(path).body
        assert ours.pretrained_cfg["file"] == path  # timm's own loading, from the file
        assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items()), name

    # Only the stages up to c3 are kept (after loading every block's weights).
    body = EfficientNetBackbone("efficientnet_b0", ["c2", "c3"], weights=str(tmp_path / "b0.safetensors"))
    body = body.body
    assert len(body.blocks) == 3
    assert torch.equal(body.blocks[2][0].conv_pw.weight, expected["blocks.2.0.conv_pw.weight"])

    cfg = tiny_cfg("build_efficientnet_backbone")
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet_b2"
    cfg.MODEL.EFFICIENTNET.WEIGHTS = str(tmp_path / "b0.pth")
    expected_error = r"MODEL.EFFICIENTNET.WEIGHTS=.*b0.pth.*missing keys \d+ .*shape mismatches [1-9]"
    with pytest.raises(ValueError, match=expected_error):
        build_efficientnet_backbone(cfg, ShapeSpec(channels=3))


def test_convert_timm_efficientnet(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("efficientnet_b0", pretrained=False).eval()
    _randomize_norms(source)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "timm_b0.pth")
    report = convert_efficientnet_file(str(tmp_path / "timm_b0.pth"), str(tmp_path / "ours.pth"))
    assert report.missing == [] and report.unexpected == []
    ours = _our_efficientnet(str(tmp_path / "ours.pth"))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["c5"], _stride32_body(source, x), rtol=0, atol=1e-6)

    # The same weights as a Detectron2 checkpoint of a whole EfficientNet-BiFPN detector.
    convert_efficientnet_file(str(tmp_path / "timm_b0.pth"), str(tmp_path / "d2.pth"), to="detectron2")
    detector = build_model(tiny_cfg("build_retinanet_efficientnet_bifpn_backbone")).eval()
    DetectionCheckpointer(detector).load(str(tmp_path / "d2.pth"))
    body = detector.backbone.bottom_up.body
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in body.state_dict().items())


def test_convert_torchvision_efficientnet(tmp_path):
    """torchvision names are mapped by position; the converted weights reproduce
    torchvision's own feature maps at strides 8, 16 and 32."""
    torch.manual_seed(0)
    source = torchvision.models.efficientnet_b0().eval()
    _randomize_norms(source)
    torch.save(source.state_dict(), tmp_path / "tv_b0.pth")
    report = convert_efficientnet_file(str(tmp_path / "tv_b0.pth"), str(tmp_path / "ours.pth"))
    assert report.missing == [] and report.unexpected == []
    ours = _our_efficientnet(str(tmp_path / "ours.pth"))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        features = ours(x)
        for name, stages in (("c3", 4), ("c4", 6), ("c5", 8)):
            torch.testing.assert_close(features[name], source.features[:stages](x), rtol=0, atol=1e-5)


def test_convert_efficientnet_rejects_other_sizes(tmp_path):
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp_path / "tv_b0.pth")
    with pytest.raises(ValueError, match="efficientnet_b1 has 508"):
        convert_efficientnet_file(str(tmp_path / "tv_b0.pth"), str(tmp_path / "x.pth"), "efficientnet_b1")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="neither timm"):
        convert_efficientnet_file(str(tmp_path / "resnet.pth"), str(tmp_path / "x.pth"))


def test_convert_weights_command_line(tmp_path):
    """The script parses its subcommands, writes the file, and reports a bad file in one
    line with exit status 2."""
    source = timm.create_model("efficientnet_b0", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "b0.pth")
    tool = [sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "efficientnet"]
    done = subprocess.run([*tool, str(tmp_path / "b0.pth"), str(tmp_path / "out.pth")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no missing keys" in done.stdout + done.stderr and (tmp_path / "out.pth").is_file()
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    failed = subprocess.run([*tool, str(tmp_path / "broken.pth"), str(tmp_path / "x.pth")],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "is not a readable checkpoint" in failed.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(importlib.util.find_spec("effdet") is None, reason="effdet is not installed")
@pytest.mark.parametrize("tf_port", [False, True], ids=["efficientdet_d0", "tf_efficientdet_d0"])
def test_convert_effdet(tf_port, tmp_path):
    """An effdet EfficientDet-D0 checkpoint becomes a RetinaNet-BiFPN checkpoint whose
    backbone reproduces effdet's BiFPN outputs; the TF ports need TF padding and the
    redundant biases."""
    prefix = "tf_" if tf_port else ""
    torch.manual_seed(0)
    from effdet import create_model

    effdet = create_model(f"{prefix}efficientdet_d0", pretrained=False, pretrained_backbone=False).eval()
    _randomize_norms(effdet)
    with torch.no_grad():
        for name, p in effdet.named_parameters():
            if "edge_weights" in name:
                p.uniform_(0.1, 2.0)
    torch.save({"state_dict": effdet.state_dict()}, tmp_path / "effdet_d0.pth")

    cfg = tiny_cfg("build_retinanet_efficientnet_bifpn_backbone")
    cfg.MODEL.EFFICIENTNET.NAME = f"{prefix}efficientnet_b0"
    cfg.MODEL.BIFPN.OUT_CHANNELS, cfg.MODEL.BIFPN.NUM_CELLS = 64, 3
    cfg.MODEL.BIFPN.SAME_PADDING = cfg.MODEL.BIFPN.BIAS_BEFORE_NORM = tf_port
    files = [str(tmp_path / "effdet_d0.pth"), str(tmp_path / "d2.pth")]
    (tmp_path / "d0.yaml").write_text(cfg.dump())  # the default cells: residual, learned P6/P7
    with pytest.raises(ValueError, match="effdet's BiFPN cells are plain"):
        convert_effdet_file(*files, str(tmp_path / "d0.yaml"), ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.BIFPN.RESIDUAL, cfg.MODEL.BIFPN.TOP_BLOCK = False, "efficientdet"  # effdet's
    (tmp_path / "d0.yaml").write_text(cfg.dump())
    report = convert_effdet_file(*files, str(tmp_path / "d0.yaml"), ["MODEL.DEVICE", "cpu"])
    assert report.missing == []
    assert report.unexpected and all(k.startswith(("class_net.", "box_net.")) for k in report.unexpected)

    detector = build_model(cfg).eval()
    DetectionCheckpointer(detector).load(str(tmp_path / "d2.pth"))
    x = torch.randn(1, 3, 512, 512)  # effdet's BiFPN resamples to sizes fixed by its config
    with torch.no_grad():
        expected = effdet.fpn(list(effdet.backbone(x)))
        actual = detector.backbone(x)
    for level, ref in zip(range(3, 8), expected):
        torch.testing.assert_close(actual[f"p{level}"], ref, rtol=0, atol=1e-5)
