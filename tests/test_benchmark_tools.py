"""The speed and comparison tools: ``benchmarks`` at tiny sizes, each script run
once as a user would to check the files it writes, and ``fold_for_inference`` keeping
outputs equal. No timing is asserted."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model
from torch import nn

from benchmarks import (
    benchmark_device,
    collect_panels,
    config_rows,
    default_configs,
    describe,
    detectron2_rows,
    edge_rows,
    interleaved_times,
    peak_memory_bytes,
    race,
    subject_config,
    time_models,
)
from benchmarks.checkpointing import checkpointing_rows
from bifpn_d2 import BiFPN, EfficientNetBackbone, FrozenChannelFusion, FrozenFusion, fold_for_inference
from bifpn_d2.engine.config import load_config
from bifpn_d2.layers import WeightedFusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small RetinaNet on our BiFPN (ResNet-18, 32 channels, 2 cells) that needs no other file.
TINY_CONFIG = """
MODEL:
  META_ARCHITECTURE: "RetinaNet"
  DEVICE: "cpu"
  BACKBONE:
    NAME: "build_retinanet_resnet_bifpn_backbone"
    FREEZE_AT: 0
  RESNETS:
    DEPTH: 18
    RES2_OUT_CHANNELS: 64
    OUT_FEATURES: ["res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res3", "res4", "res5"]
  BIFPN:
    OUT_CHANNELS: 32
    NUM_CELLS: 2
    NORM: "BN"  # EfficientDet's, which folding removes (the default, LN, stays)
    TOP_BLOCK: "p6p7_c5"  # P6/P7 through the cells: fusion at every level, BN on a 1x1 P7
  RETINANET:
    NUM_CLASSES: 3
    NUM_CONVS: 1
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
"""


def run_tool(name: str, args) -> None:
    """Run ``tools/<name>.py`` with ``args`` on one thread, as a user would."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *map(str, args)],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def read_csv(path: str):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the tools default to the current count);
    the count is restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "Tiny-RetinaNet-BiFPN.yaml"
    path.write_text(TINY_CONFIG)
    return str(path)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and fusion weights, so that folding them is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        for name, p in model.named_parameters():
            if name.endswith("fusion.weight") or "fpn_fusion" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 2)
    return model


# --------------------------------------------------------------------------- folding
@pytest.mark.parametrize(
    "builder, overrides",
    [
        ("build_retinanet_resnet_bifpn_backbone", []),
        ("build_resnet_bifpn_backbone",
         ["MODEL.BIFPN.FUSE_TYPE", "softmax", "MODEL.BIFPN.SAME_PADDING", True]),
        ("build_retinanet_resnet_bifpn_backbone", ["MODEL.BIFPN.FUSE_TYPE", "channel_fast_normalized"]),
        ("build_retinanet_efficientnet_bifpn_backbone", ["MODEL.BIFPN.BIAS_BEFORE_NORM", True]),
        (
            "build_resnet_weighted_fpn_backbone",
            ["MODEL.FPN.FUSE_TYPE", "fast_normalized", "MODEL.FPN.NORM", "BN"],
        ),
    ],
)
def test_fold_for_inference_keeps_outputs(make_cfg, builder, overrides):
    cfg = make_cfg(builder)
    cfg.merge_from_list(overrides)
    model = randomise(build_backbone(cfg)).eval()
    folded = fold_for_inference(model)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert list(expected) == list(actual)
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-4, rtol=1e-4), name
    norms = (nn.BatchNorm2d, FrozenBatchNorm2d)
    assert not any(isinstance(m, norms) for m in folded.modules()), "a foldable norm is left"
    assert any(isinstance(m, norms) for m in model.modules()), "the original must keep its norms"
    frozen = FrozenChannelFusion if "channel_" in str(overrides) else FrozenFusion
    assert any(isinstance(m, frozen) for m in folded.modules())
    assert not any(isinstance(m, WeightedFusion) and m.weight is not None for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b2", "tf_efficientnet_lite0"])
def test_fold_finds_every_norm_of_timm_efficientnets(name):
    """timm's blocks are folded through its public layer types: no batch norm is left in
    any block kind, and the outputs stay."""
    model = randomise(EfficientNetBackbone(name, ["c3", "c4", "c5"])).eval()
    folded = fold_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    for level in expected:
        torch.testing.assert_close(actual[level], expected[level], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fuse_type", ["fast_normalized", "channel_softmax"])
def test_folded_bifpn_scripts_and_matches(make_cfg, fuse_type):
    import detectron2.export.torchscript  # noqa: F401  (detectron2's patches that let ResNet script)

    cfg = make_cfg("build_retinanet_resnet_bifpn_backbone")
    cfg.MODEL.BIFPN.FUSE_TYPE = fuse_type
    model = randomise(build_backbone(cfg)).eval()
    folded = fold_for_inference(model)
    scripted = torch.jit.script(folded)
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        expected, actual = model(x), scripted(x)
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-4, rtol=1e-4), name


def test_fold_whole_detector(tiny_config):
    model = randomise(build_model(load_config(tiny_config))).eval()
    folded = fold_for_inference(model)
    inputs = [{"image": torch.rand(3, 96, 128) * 255}]
    with torch.no_grad():
        images = model.preprocess_image(inputs).tensor
        expected = model.head(list(model.backbone(images).values()))
        actual = folded.head(list(folded.backbone(images).values()))
        assert "instances" in folded(inputs)[0]  # the whole inference path runs folded
    for e, a in zip(sum(expected, []), sum(actual, [])):  # class logits, then box deltas, per level
        assert torch.allclose(e, a, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- helpers
def test_measurement_helpers():
    rounds = []
    times = interleaved_times({"a": lambda: torch.ones(10), "b": lambda: torch.ones(20)}, repeats=3, warmup=1,
                              on_round=lambda done, total: rounds.append((done, total)))
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert rounds == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(t >= 0 for v in times.values() for t in v)

    # 4 MiB held at once (two 2 MiB tensors alive together), then freed.
    def hold_two() -> None:
        a = torch.empty(2**19)
        b = torch.empty(2**19)
        del a, b

    assert 2**22 <= peak_memory_bytes(hold_two) < 2**22 + 2**16


# --------------------------------------------------------------------------- sweep (tools/benchmark.py)
def test_benchmark_sweep_reports_a_failed_training_step(tiny_config):
    cfg = subject_config(tiny_config)
    rows = benchmark_device(cfg, "model", torch.device("cpu"), "tiny", ["64x96"], [1, 2], repeats=1, warmup=0)
    # One image makes a 1x1 P7, on which training-mode batch norm fails: reported, not raised.
    assert "training step failed" in rows[0]["note"] and "train_ms" not in rows[0]
    assert rows[1]["train_ms"] > 0 and rows[1]["train_mem_MB"] > 0


def test_benchmark_tool_writes_table_csv_and_plot(tiny_config, tmp_path):
    out = tmp_path / "bench"
    args = f"--config-file {tiny_config} --sizes 64x96 --batch-sizes 1 2 --repeats 1 --warmup 0 --devices cpu"
    run_tool("benchmark", args.split() + ["--threads", 1, "--output-dir", out])
    written = read_csv(out / "benchmark.csv")
    assert [(r["size"], r["batch"]) for r in written] == [("64x96", "1"), ("64x96", "2")]
    for row in written:
        for key in ("params_M", "gflops", "infer_ms", "folded_infer_ms", "infer_mem_MB"):
            assert float(row[key]) > 0, key
    assert "| Tiny-RetinaNet-BiFPN |" in (out / "benchmark.md").read_text()
    assert (out / "benchmark.png").stat().st_size > 0


def test_benchmark_of_a_backbone_name():
    overrides = "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64 MODEL.FPN.OUT_CHANNELS 32 "
    overrides += "MODEL.RESNETS.OUT_FEATURES ['res4','res5'] MODEL.FPN.IN_FEATURES ['res4','res5']"
    cfg = subject_config("", overrides.split(), "build_resnet_weighted_fpn_backbone")
    name = describe(cfg, "")
    rows = benchmark_device(cfg, "backbone", torch.device("cpu"), name, ["64"], [1], 1, 0, memory=False)
    assert rows[0]["name"] == "build_resnet_weighted_fpn_backbone"
    assert rows[0]["train_ms"] > 0 and "train_mem_MB" not in rows[0]


# --------------------------------------------------------------------------- checkpointing
def test_checkpointing_benchmark_measures_less_memory_with_the_keys_on(tmp_path):
    out = tmp_path / "ckpt"
    config = os.path.join(ROOT, "configs", "EfficientDet", "EfficientDet-D0.yaml")
    args = ["--config-file", config, "--sizes", "96", "--batch-sizes", 2, "--repeats", 1, "--warmup", 0]
    run_tool("benchmark_checkpointing", args + ["--threads", 1, "--output-dir", out, "--output-name", "d0"])
    (row,) = read_csv(out / "d0.csv")
    assert (row["size"], row["batch"]) == ("96x96", "2")
    assert float(row["train_ms_off"]) > 0 and float(row["train_ms_on"]) > 0
    # the stem alone keeps its activations: well under the plain step's peak
    assert float(row["train_mem_MB_on"]) < 0.75 * float(row["train_mem_MB_off"])
    assert float(row["mem_on_over_off"]) == pytest.approx(
        float(row["train_mem_MB_on"]) / float(row["train_mem_MB_off"]), rel=1e-3)
    assert "| EfficientDet-D0 |" in (out / "d0.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
@pytest.mark.parametrize("args", [
    ["efficientdet_race", "race", "--device", "cuda"],
    ["neck_race", "--device", "cuda"],
    ["profile_model", "--device", "cuda"],
    ["benchmark_checkpointing", "--config-file", "configs/EfficientDet/EfficientDet-D0.yaml",
     "--device", "cuda:0"],
])
def test_gpu_benchmarks_refuse_a_machine_without_one_in_one_line(args, tmp_path):
    """``--device cuda`` where torch sees no GPU: one line naming the device and the way
    out, before anything is built or written."""
    tool, *rest = args
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{tool}.py"), *rest,
                             "--output-dir", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    device = rest[-1]
    assert result.stderr.strip().splitlines()[-1] == (
        f"{tool}.py: error: device '{device}': no CUDA GPU is available here; use cpu")
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", ["benchmark", "benchmark_checkpointing"])
def test_benchmark_tools_refuse_a_bad_config_value_in_one_line(tool, tmp_path):
    config = os.path.join(ROOT, "configs", "EfficientDet", "EfficientDet-D0.yaml")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", f"{tool}.py"), "--config-file", config,
         "--output-dir", str(tmp_path / "out"), "MODEL.BIFPN.CHECKPOINT_ACTIVATIONS", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"{tool}.py: error: config key MODEL.BIFPN.CHECKPOINT_ACTIVATIONS on the command line "
                    "expects a value of type bool, got '2'")
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_checkpointing_benchmark_refuses_an_unknown_variant(tiny_config):
    with pytest.raises(ValueError, match="among \\['off', 'on'\\]"):
        checkpointing_rows(subject_config(tiny_config), "tiny", ["64"], [1], 1, 0, torch.device("cpu"),
                           variants=["half"])


# --------------------------------------------------------------------------- neck race
def test_neck_race_reports_parity_and_ratios():
    pytest.importorskip("effdet")
    cpu = torch.device("cpu")
    rows = [
        race("bifpn-d0", [128, 128], 2, cpu, repeats=1, warmup=0),
        race("fpn-r50", [72, 100], 2, cpu, repeats=1, warmup=0),
    ]
    by_race = {r["race"]: r for r in rows}
    assert list(by_race) == ["bifpn-d0 128x128 bs2", "fpn-r50 72x100 bs2"]
    for row in rows:
        assert row["ref_params"] == row["our_params"]
        for key in ("infer_ratio", "folded_ratio", "train_ratio", "train_mem_ratio"):
            assert row[key] > 0, key
    assert by_race["bifpn-d0 128x128 bs2"]["max_diff"] < 1e-4
    assert by_race["bifpn-d0 128x128 bs2"]["folded_max_diff"] < 1e-4
    assert "fails at 72x100" in by_race["fpn-r50 72x100 bs2"]["reference"]


def test_neck_race_tool_writes_table_csv_and_plot(tmp_path):
    pytest.importorskip("effdet")
    args = "--cases bifpn-d0 fpn-r50 --d0-size 128 --fpn-sizes 72x100 --batch-sizes 2 --threads 1"
    run_tool("neck_race", args.split() + ["--repeats", "1", "--warmup", "0", "--output-dir", tmp_path])
    assert len(read_csv(tmp_path / "race.csv")) == 2
    assert "## Targets" in (tmp_path / "race.md").read_text()
    assert (tmp_path / "race.png").stat().st_size > 0


# --------------------------------------------------------------------------- model zoo table
@pytest.fixture
def results_root(tmp_path):
    """A training run of the tiny config that logged a box AP of 12.5."""
    results = tmp_path / "results" / "Tiny-RetinaNet-BiFPN"
    results.mkdir(parents=True)
    (results / "metrics.json").write_text(
        json.dumps({"iteration": 9, "total_loss": 1.0})
        + "\n"
        + json.dumps({"iteration": 10, "bbox/AP": 12.5})
        + "\n"
    )
    return tmp_path / "results"


def test_model_zoo_rows(tiny_config, results_root, tmp_path):
    cpu, runners = torch.device("cpu"), {}
    rows = detectron2_rows("64", cpu, runners)
    configs = [tiny_config, str(tmp_path / "not-written-yet.yaml")]
    rows += config_rows(configs, "64", str(results_root), {}, cpu, runners)
    time_models(rows, runners, repeats=1, warmup=0, device=cpu)
    names = [r["model"] for r in rows]
    assert names == [
        "RetinaNet R50-FPN (detectron2)",
        "Faster R-CNN R50-FPN (detectron2)",
        "Tiny-RetinaNet-BiFPN",
    ]
    assert rows[0]["ref_AP"] == 37.4 and rows[1]["ref_AP_3x"] == 40.2
    assert rows[0]["params_M"] == pytest.approx(37.9, abs=0.1)
    assert rows[2]["your_AP"] == 12.5
    assert rows[2]["note"].endswith("on ?")  # the config names no test dataset: not plotted as COCO AP
    assert all(r["gflops"] > 0 and r["latency_ms"] > 0 for r in rows)


def test_model_zoo_ap_of_a_run_evaluated_on_several_datasets(tmp_path):
    """Such a run logs one AP per dataset: the config's first test dataset's is taken."""
    from benchmarks.zoo import last_ap

    record = {"iteration": 10, "a_transfer/bbox/AP": 40.0, "b_val/bbox/AP": 33.3, "b_val/bbox/AP50": 70.0}
    (tmp_path / "metrics.json").write_text(json.dumps(record) + "\n")
    assert last_ap(str(tmp_path), "b_val") == 33.3
    assert last_ap(str(tmp_path), "a_transfer") == 40.0
    assert last_ap(str(tmp_path), "not_evaluated") is None


def test_model_zoo_tool_writes_table_csv_and_plot(tiny_config, results_root, tmp_path):
    out = tmp_path / "zoo"
    args = ["--configs", tiny_config, tmp_path / "not-written-yet.yaml", "--size", "64", "--threads", "1"]
    args += ["--repeats", "1", "--warmup", "0", "--results-root", results_root, "--output-dir", out]
    run_tool("model_zoo_table", args)
    assert len(read_csv(out / "model_zoo.csv")) == 3
    assert (out / "ap_vs_gflops.png").stat().st_size > 0


def test_default_zoo_configs_skip_bases(tmp_path):
    for name in ("Base-RetinaNet.yaml", "sub/Base-Tiny.yaml", "sub/Tiny-BiFPN.yaml", "B.yaml", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    found = [os.path.relpath(c, tmp_path) for c in default_configs(str(tmp_path))]
    assert found == ["B.yaml", os.path.join("sub", "Tiny-BiFPN.yaml")]


# --------------------------------------------------------------------------- fusion weights
def test_plot_fusion_weights_from_checkpoint(tiny_config, tmp_path):
    """The tool's weights are the normalised ones, computed here by hand from raw weights
    1, 2, ..., n of each n-input node (fast normalized: k / (eps + n (n + 1) / 2))."""
    model = build_model(load_config(tiny_config))
    fusions = [node.fusion for cell in model.backbone.cells for node in cell.nodes]
    assert {f.method for f in fusions} == {"fast_normalized"}
    expected = []
    with torch.no_grad():
        for fusion in fusions:
            n = fusion.num_inputs
            fusion.weight.copy_(torch.arange(1.0, n + 1))
            expected += [k / (fusion.eps + n * (n + 1) / 2) for k in range(1, n + 1)]
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    run_tool(
        "plot_fusion_weights",
        ["--config-file", tiny_config, "--weights", checkpoint, "--output-dir", tmp_path],
    )
    rows = read_csv(tmp_path / "fusion_weights.csv")
    assert isinstance(model.backbone, BiFPN)
    assert [float(r["weight"]) for r in rows] == pytest.approx(expected, rel=1e-6)
    assert rows[0]["node"] == "P6 td" and rows[0]["source"] == "P6 in"
    assert len(rows) == len(expected)
    assert (tmp_path / "fusion_weights.png").stat().st_size > 0


def test_fusion_weights_title_names_no_folder_above_the_working_directory(tmp_path, monkeypatch):
    import importlib.util

    path = os.path.join(ROOT, "tools", "plot_fusion_weights.py")
    spec = importlib.util.spec_from_file_location("plot_fusion_weights", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.chdir(tmp_path)
    assert tool.shown_path(str(tmp_path / "output" / "seed0" / "model_final.pth")) == os.path.join(
        "output", "seed0", "model_final.pth")
    outside = "/elsewhere/a/b/seed0/model_final.pth"
    assert tool.shown_path(outside) == os.path.join("b", "seed0", "model_final.pth")


def test_fusion_weights_of_a_weighted_fpn(tmp_path):
    config = tmp_path / "fpn.yaml"
    config.write_text(
        TINY_CONFIG.replace(
            "build_retinanet_resnet_bifpn_backbone", "build_retinanet_resnet_weighted_fpn_backbone"
        )
    )
    model = build_model(load_config(str(config), ["MODEL.FPN.FUSE_TYPE", "softmax"]))
    with torch.no_grad():
        rows = edge_rows(collect_panels(model))
    assert [(r["node"], r["source"]) for r in rows] == [
        ("P4", "P4 lateral"),
        ("P4", "P5 top-down"),
        ("P3", "P3 lateral"),
        ("P3", "P4 top-down"),
    ]
    assert all(r["weight"] == pytest.approx(0.5) for r in rows)


def test_effdet_training_comparison_trains_both_sides_alike(tmp_path):
    """tools/compare_effdet_training.py --quick: effdet's side and ours start from the same
    weights and see the same batches with the same drop-path draws, so their first two
    losses agree (a different initialisation, batch, augmentation, matching or loss would
    show here); both are evaluated, and the table and the curves are written."""
    pytest.importorskip("effdet")
    tool = os.path.join(ROOT, "tools", "compare_effdet_training.py")
    result = subprocess.run([sys.executable, tool, "--quick", "--seeds", "0", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def losses(side: str):
        with open(tmp_path / f"{side}_seed0" / "metrics.json") as f:
            records = [json.loads(line) for line in f]
        assert "bbox/AP" in records[-1]  # evaluated
        return [r["total_loss"] for r in records if "total_loss" in r]

    effdet_losses, our_losses = losses("effdet"), losses("ours")
    assert len(effdet_losses) == len(our_losses) == 2
    assert effdet_losses == pytest.approx(our_losses, rel=1e-4)
    assert (tmp_path / "results.md").read_text().count("| effdet |") == 1
    assert (tmp_path / "results.png").stat().st_size > 0


# --------------------------------------------------------------------------- object sizes
def test_size_buckets_are_coco_area_ranges():
    from benchmarks.object_sizes import size_bucket

    assert [size_bucket(a) for a in (0, 32**2 - 1, 32**2, 96**2 - 1, 96**2, 1e9)] == [
        "small", "small", "medium", "medium", "large", "large"]


def test_size_diagnosis_counts_every_box_and_runs_the_head_on_ground_truth(tmp_path):
    """A random Faster R-CNN on 4 tiny images: every ground-truth box counted in its
    bucket; the box head, given the ground-truth boxes, returns them (its regressions start
    near zero), which the RPN's proposals of a random model never do."""
    from detectron2.data import DatasetCatalog

    from benchmarks.object_sizes import size_bucket, size_diagnosis
    from bifpn_d2.data import register_synthetic_dataset

    register_synthetic_dataset("sizes_test", 4, 192, 3, root=tmp_path, split="val")
    cfg = load_config("configs/synthetic/FasterRCNN-R18-BiFPN.yaml",
                      ["MODEL.BIFPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
                       "INPUT.MIN_SIZE_TEST", 192, "INPUT.MAX_SIZE_TEST", 192])
    torch.manual_seed(0)
    rows = {r["size"]: r for r in size_diagnosis(build_model(cfg), cfg, "sizes_test")}
    expected = {"small": 0, "medium": 0, "large": 0}
    for record in DatasetCatalog.get("sizes_test"):
        for a in record["annotations"]:
            expected[size_bucket(a["bbox"][2] * a["bbox"][3])] += 1  # XYWH boxes
    assert {k: rows[k]["boxes"] for k in expected if expected[k]} == {k: v for k, v in expected.items() if v}
    assert rows["all"]["boxes"] == sum(expected.values())
    assert rows["all"]["oracle_iou"] > 0.98 and rows["all"]["recall@0.7"] < 50
    assert 0 <= rows["all"]["oracle_top1"] <= 100 and 0 < rows["all"]["oracle_p_true"] < 100
    assert 0 < rows["all"]["part_p_true"] < 100


def test_part_probability_scores_the_four_corner_parts_of_each_box():
    """The head sees the four corners at 60 % of each box's width and height (IoU 0.36),
    and each box gets the mean true-class probability of its own four parts."""
    from types import SimpleNamespace

    from detectron2.structures import Boxes, pairwise_iou

    from benchmarks.object_sizes import _part_probability

    seen = []

    def pooler(levels, boxes):
        seen.append(boxes[0].tensor.clone())
        return boxes[0].tensor

    def predictor(parts):  # class 0's logit: the part's x0, class 1 and background: 0
        logits = torch.zeros(len(parts), 3)
        logits[:, 0] = parts[:, 0] / 10
        return logits, None

    heads = SimpleNamespace(box_pooler=pooler, box_head=lambda x: x, box_predictor=predictor)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [10.0, 10.0, 60.0, 30.0]])
    probs = _part_probability(heads, [], boxes, torch.tensor([0, 1]))
    parts = seen[0].view(2, 4, 4)
    assert parts[0].tolist() == [[0, 0, 6, 12], [4, 0, 10, 12], [0, 8, 6, 20], [4, 8, 10, 20]]
    iou = pairwise_iou(Boxes(parts[1]), Boxes(boxes[1:])).flatten()
    assert iou.tolist() == pytest.approx([0.36] * 4)
    for box, true_class in ((0, 0), (1, 1)):
        expected = predictor(parts[box])[0].softmax(dim=1)[:, true_class].mean()
        assert probs[box] == pytest.approx(float(expected))


def test_size_diagnosis_tool_refuses_a_folder_without_a_trained_model(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "diagnose_object_sizes.py"), "--run", f"FPN={tmp_path}",
         "--output-dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(f"--run FPN={tmp_path}: no config.yaml there")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--dataset", "no_such_dataset"], "argument --dataset: 'no_such_dataset' is not registered"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--run", "no_label_here"], "--run takes LABEL=DIR, got 'no_label_here'"),
])
def test_size_diagnosis_tool_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "diagnose_object_sizes.py"), "--run", f"FPN={tmp_path}",
         "--output-dir", str(tmp_path / "out"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_size_diagnosis_tool_refuses_a_corrupt_weight_file(tmp_path):
    (tmp_path / "config.yaml").write_text("MODEL:\n  META_ARCHITECTURE: GeneralizedRCNN\n")
    (tmp_path / "model_final.pth").write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "diagnose_object_sizes.py"), "--run", f"FPN={tmp_path}",
         "--output-dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "is not a readable checkpoint" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_run_is_ranked_and_plotted_on_its_own_dataset(tmp_path):
    """With several test datasets, a run's curve and progress value are those of the
    dataset it was given, not of whichever key sorts first in ``metrics.json``."""
    from benchmarks.comparison import Run, read_metrics

    records = [
        {"iteration": 9, "total_loss": 1.0, "a_dev/bbox/AP": 10.0, "b_val/bbox/AP": 20.0},
        {"iteration": 19, "total_loss": 0.5, "a_dev/bbox/AP": 11.0, "b_val/bbox/AP": 22.0},
    ]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = read_metrics(Run("BiFPN", "unused.yaml", tmp_path, dataset="b_val"))
    assert run.ap_curve == [(10, 20.0), (20, 22.0)]
    assert run.value(run.primary, run.dataset) == 22.0
    on_dev = read_metrics(Run("BiFPN", "unused.yaml", tmp_path, dataset="a_dev"))
    assert on_dev.ap_curve == [(10, 10.0), (20, 11.0)]


def test_neck_study_rows_give_ap_large_on_every_split():
    """The study's rows carry AP_large (mean of the seeds) and its difference to the
    pair's FPN on dev, val and each transfer set, read from each split's own metrics."""
    from benchmarks.comparison import Run
    from benchmarks.neck_study import ARMS, SPLIT_COLUMNS, summarize_arms

    arms = {a.key: a for a in ARMS}
    fpn, candidate = arms["retinanet/fpn"], arms["retinanet/candidate"]

    def run(arm, seed, offset):
        metrics = {}
        for i, dataset in enumerate(SPLIT_COLUMNS):
            metrics[f"{dataset}/bbox/AP"] = 30.0 + i
            metrics[f"{dataset}/bbox/APl"] = 40.0 + 10 * i + offset + seed  # seeds 0 and 1 differ by 1
        return arm, Run(arm.key, arm.config, Path("unused"), seed=seed, metrics=metrics)

    results = [run(fpn, 0, 0.0), run(fpn, 1, 0.0), run(candidate, 0, -2.0), run(candidate, 1, 3.0)]
    rows = {row["arm"]: row for row in summarize_arms(results, {})}
    for i, column in enumerate(SPLIT_COLUMNS.values()):
        assert rows["fpn"][f"{column} large"] == pytest.approx(40.5 + 10 * i)
        assert rows["candidate"][f"{column} large - fpn"] == pytest.approx(0.5)
    assert rows["candidate"]["large - fpn per split"] == "+0.5 / +0.5 / +0.5 / +0.5"
    assert rows["candidate"]["val large - fpn"] == pytest.approx(0.5)
    assert rows["candidate"]["dev large per seed"] == "38.0 / 44.0"


def test_pooled_studies_equal_one_study_of_every_seed(tmp_path):
    """Pooling the CSV of seeds 0 1 with that of seeds 2 3 gives the rows of one study of
    seeds 0-3 (means, sample sds, AP_large, differences to the FPN, wins); an arm whose
    seeds repeat across the tables is refused."""
    import csv

    from benchmarks.comparison import Run
    from benchmarks.neck_study import ARMS, CSV_COLUMNS, SPLIT_COLUMNS, pool_studies, summarize_arms
    from benchmarks.report import write_csv

    arms = {a.key: a for a in ARMS}
    fpn, recipe = arms["faster_rcnn/fpn"], arms["faster_rcnn/norm_ln_top_p6p7_p5"]

    def run(arm, seed, offset):
        metrics = {}
        for i, dataset in enumerate(SPLIT_COLUMNS):
            metrics[f"{dataset}/bbox/AP"] = 50.0 + i + offset + seed * seed  # unequal spreads per group
            metrics[f"{dataset}/bbox/APl"] = 40.0 + i - offset * seed
        return arm, Run(arm.key, arm.config, Path("unused"), seed=seed, metrics=metrics)

    costs = {fpn.key: {"GFLOPs": 7.0, "params_M": 1.0, "neck_params_M": 0.5},
             recipe.key: {"GFLOPs": 6.5, "params_M": 1.0, "neck_params_M": 0.4}}
    runs = {(arm.key, seed): run(arm, seed, offset)
            for arm, offset in ((fpn, 0.0), (recipe, 2.5)) for seed in range(4)}

    def table(seeds, name):
        rows = summarize_arms([runs[arm.key, s] for arm in (fpn, recipe) for s in seeds], costs)
        write_csv(rows, str(tmp_path / name), CSV_COLUMNS)
        with open(tmp_path / name, newline="") as f:
            return list(csv.DictReader(f))

    expected = summarize_arms([runs[arm.key, s] for arm in (fpn, recipe) for s in range(4)], costs)
    pooled = pool_studies([table([0, 1], "a.csv"), table([2, 3], "b.csv")])
    assert [(r["pair"], r["arm"], r["seeds"]) for r in pooled] == [
        ("faster_rcnn", "fpn", "0 1 2 3"), ("faster_rcnn", "norm_ln_top_p6p7_p5", "0 1 2 3")]
    for got, want in zip(pooled, expected):
        for column in CSV_COLUMNS:
            if column in want and isinstance(want[column], float):
                assert got[column] == pytest.approx(want[column], nan_ok=True), column
            elif column in want:
                assert got[column] == want[column], column
    with pytest.raises(ValueError, match="repeat"):
        pool_studies([table([0, 1], "a.csv"), table([1, 2], "c.csv")])


def test_dense_size_diagnosis_reads_the_head_at_each_boxs_anchors(tmp_path):
    """A RetinaNet on 4 tiny images whose head predicts a fixed probability per class and
    no box change: every box counted in its bucket and under its best anchor's level;
    p_true is its own class's probability; the best regressed box is its best anchor."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, BoxMode, pairwise_iou

    from benchmarks.object_sizes import dense_size_diagnosis, size_bucket
    from bifpn_d2.data import register_synthetic_dataset

    register_synthetic_dataset("dense_sizes_test", 4, 192, 3, root=tmp_path, split="val")
    sizes = ["INPUT.MIN_SIZE_TEST", 192, "INPUT.MAX_SIZE_TEST", 192]
    cfg = load_config("configs/synthetic/RetinaNet-R18-BiFPN.yaml", ["MODEL.BIFPN.OUT_CHANNELS", 32] + sizes)
    torch.manual_seed(0)
    model = build_model(cfg)
    head = model.head
    class_logit = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])
    with torch.no_grad():
        head.cls_score.weight.zero_()
        head.cls_score.bias.copy_(class_logit.repeat(head.cls_score.bias.numel() // 5))
        head.bbox_pred.weight.zero_()
        head.bbox_pred.bias.zero_()
    rows = {r["size"]: r for r in dense_size_diagnosis(model, cfg, "dense_sizes_test")}

    expected = {"small": [], "medium": [], "large": []}
    for record in DatasetCatalog.get("dense_sizes_test"):
        for a in record["annotations"]:
            expected[size_bucket(a["bbox"][2] * a["bbox"][3])].append(a["category_id"])
    everything = [c for classes in expected.values() for c in classes]
    assert rows["all"]["boxes"] == len(everything)
    for bucket, classes in expected.items():
        if not classes:
            continue
        assert rows[bucket]["boxes"] == len(classes)
        per_level = {name: r for name, r in rows.items() if name.startswith(bucket + ", best anchor on P")}
        assert sum(r["boxes"] for r in per_level.values()) == len(classes)
        assert all(r["level"] == int(name.rsplit("P", 1)[1]) and 3 <= r["level"] <= 7
                   for name, r in per_level.items())
        mean_p = float(torch.sigmoid(class_logit[classes]).mean()) * 100
        assert rows[bucket]["p_true"] == pytest.approx(mean_p, rel=1e-5)
    # No box change: the best regressed box of each ground truth is its best anchor.
    features = model.backbone(torch.zeros(1, 3, 192, 192))
    anchors = Boxes.cat(model.anchor_generator([features[f] for f in model.head_in_features]))
    gt = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
          for record in DatasetCatalog.get("dense_sizes_test") for a in record["annotations"]]
    best_anchor_iou = pairwise_iou(Boxes(torch.tensor(gt)), anchors).max(dim=1).values
    assert rows["all"]["iou_best"] == pytest.approx(float(best_anchor_iou.mean()), rel=1e-5)
    assert rows["all"]["iou_best"] >= rows["all"]["iou_top"]
    assert 0 <= rows["all"]["detected@0.75"] <= rows["all"]["detected@0.5"] <= 100


def test_size_diagnosis_tool_refuses_a_detector_it_cannot_read(tmp_path):
    """A meta-architecture with neither ROI heads nor a dense head: one line naming the
    kinds it diagnoses, before any model is built or anything written."""
    (tmp_path / "config.yaml").write_text("MODEL:\n  META_ARCHITECTURE: SemanticSegmentor\n")
    torch.save({"model": {}}, tmp_path / "model_final.pth")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "diagnose_object_sizes.py"), "--run", f"Seg={tmp_path}",
         "--output-dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "SemanticSegmentor is neither" in last and "['GeneralizedRCNN', 'RetinaNet']" in last
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_neck_study_tool_refuses_a_negative_seed_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "neck_study.py"), "--arms", "semantic_fpn/cells1_w192",
         "--seeds", "0", "-1", "--report-only", "--output-dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--seeds must be >= 0, got -1" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
