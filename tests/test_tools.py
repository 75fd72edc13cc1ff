"""The Detectron2-style tools on the tiny synthetic dataset with random weights, run as a
user runs them (tools/demo.py, tools/visualize_data.py, tools/analyze_model.py), and the
library functions behind them (bifpn_d2.engine.visualize and .analysis)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bifpn_d2.data import ensure_generated, register_synthetic_dataset
from bifpn_d2.engine import ConfigError, load_config
from bifpn_d2.engine.analysis import analysis_inputs, analyze
from bifpn_d2.engine.config import build_checked_model
from bifpn_d2.engine.visualize import dataset_pictures, expand_inputs, mosaic, output_paths

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "synthetic/RetinaNet-R18-BiFPN.yaml"  # a shipped config's name, as users may give it
TINY = [
    "DATASETS.TRAIN", "('synthetic_shapes_tiny_train',)", "DATASETS.TEST", "('synthetic_shapes_tiny_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: datasets generated under a temporary root, 2 threads."""
    return dict(os.environ, BIFPN_D2_DATASETS=str(tmp_path_factory.mktemp("datasets")), OMP_NUM_THREADS="2")


@pytest.fixture(scope="module")
def in_process(env):
    """Overrides for in-process calls: two small datasets registered under the same root."""
    for split, count in (("train", 4), ("val", 3)):
        root = env["BIFPN_D2_DATASETS"]
        register_synthetic_dataset(f"tools_test_{split}", count, 128, 0, root=root, split=split)
    return [*TINY, "DATASETS.TRAIN", "('tools_test_train',)", "DATASETS.TEST", "('tools_test_val',)"]


@pytest.fixture(scope="module")
def val_images(in_process):
    return ensure_generated("tools_test_val")[1]


def run_tool(script: str, args, env) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / script), *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _differs(drawn: Path, original: Path) -> bool:
    a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (drawn, original))
    return a.shape == b.shape and np.abs(a - b).max() > 64


def test_demo_draws_predictions(tmp_path, env, val_images):
    """A glob over two files into a folder; boxes with class names drawn (random weights,
    so every score is shown)."""
    out = tmp_path / "pictures"
    result = run_tool("demo.py", ["--config-file", CONFIG, "--input", str(val_images / "00000[01].jpg"),
                                  "--output", str(out), "--confidence-threshold", "0",
                                  "--opts", *TINY, "TEST.DETECTIONS_PER_IMAGE", "5"], env)
    assert sorted(p.name for p in out.iterdir()) == ["000000.jpg", "000001.jpg"]
    assert all(_differs(out / name, val_images / name) for name in ("000000.jpg", "000001.jpg"))
    assert "5 detected" in result.stdout + result.stderr


def test_demo_inputs_and_outputs(tmp_path):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"")
    assert expand_inputs([str(tmp_path / "*.jpg"), str(tmp_path / "b.png")]) == [
        str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    with pytest.raises(ConfigError, match="no such image file"):
        expand_inputs([str(tmp_path / "*.gif")])
    assert output_paths(["x/a.jpg"], "out.png") == ["out.png"]
    assert output_paths(["x/a.jpg"], "pictures/") == [os.path.join("pictures/", "a.jpg")]
    assert output_paths(["x/a.jpg", "x/b.jpg"], "pictures") == ["pictures/a.jpg", "pictures/b.jpg"]
    with pytest.raises(ConfigError, match="several inputs are named 'a.jpg'"):
        output_paths(["x/a.jpg", "y/a.jpg"], "pictures")


def test_visualize_data_after_the_data_loader(tmp_path, env):
    out = tmp_path / "data"
    mosaic_file = tmp_path / "all.jpg"
    args = ["--source", "dataloader", "--num-images", "3", "--columns", "2", "--mosaic", str(mosaic_file)]
    run_tool("visualize_data.py", ["--config-file", CONFIG, *args, "--output-dir", str(out), *TINY], env)
    pictures = sorted(p.name for p in out.iterdir())
    assert len(pictures) == 3 and pictures[0].startswith("0000_")
    assert Image.open(mosaic_file).size == (2 * 128 + 4, 2 * 128 + 4)


def test_dataset_pictures_from_annotations(in_process):
    pictures = list(dataset_pictures(load_config(CONFIG, in_process), "annotation", 2))
    assert [name for name, _ in pictures] == ["000000.jpg", "000001.jpg"]
    assert all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for _, p in pictures)
    assert mosaic([np.zeros((2, 3, 3), np.uint8)] * 3, columns=2, gap=1).shape == (5, 7, 3)


def test_analyze_model_writes_tables(tmp_path, env):
    out = tmp_path / "analysis"
    run_tool("analyze_model.py", ["--config-file", CONFIG, "--tasks", "flop", "parameter", "-n", "2",
                                  "--output", str(out), *TINY], env)
    assert sorted(p.name for p in out.iterdir()) == ["flop.txt", "parameter.txt"]
    flops = (out / "flop.txt").read_text()
    assert "| backbone.cells " in flops and "#flops" in flops and "Total GFLOPs: 0.8" in flops
    assert "backbone.cells.0.nodes" in (out / "parameter.txt").read_text()


def test_analysis_of_random_images_and_activations(in_process):
    """Without the dataset: random images of a given size; activations per module."""
    cfg = load_config(CONFIG, [*in_process, "DATASETS.TEST", "()"])
    with pytest.raises(ConfigError, match="DATASETS.TEST is empty"):
        next(analysis_inputs(cfg, 1))
    model = build_checked_model(cfg).eval()
    report = analyze(model, "activation", analysis_inputs(cfg, 2, [96, 128]))
    assert "#activations" in report and "over 2 input(s)" in report and "Total activations" in report
    assert analyze(model, "structure").startswith("RetinaNet(")


def test_docs_steps_name_existing_tools_and_docs_files():
    """Every step of tools/regenerate_docs.py runs a tool that exists and writes a file the
    docs hold (a renamed tool or page breaks this)."""
    from benchmarks.docs_regen import STEPS

    root = Path(__file__).resolve().parents[1]
    for step in STEPS:
        assert (root / step.command[1]).is_file(), step.name
        targets = list(step.copies.values()) or [
            part.split("/")[-1] for part in step.command if part.startswith("{docs}/")]
        assert targets, f"{step.name} writes nothing into docs/"
        assert all((root / "docs" / t).is_file() for t in targets), (step.name, targets)


def test_docs_steps_copy_what_succeeded_only(tmp_path):
    """A step's files are copied into the docs folder once it succeeded; a failing step (or
    one whose file is missing) leaves the docs file as it was and is reported."""
    from benchmarks.docs_regen import Step, run_steps

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "table.md").write_text("old")
    write = "import pathlib; pathlib.Path('out/t.md').write_text('new')"
    fail = write + "; raise SystemExit(3)"
    steps = [Step("fails", [sys.executable, "-c", fail], "out", {"t.md": "table.md"}),
             Step("no_file", [sys.executable, "-c", "pass"], "out2", {"t.md": "table.md"})]
    assert run_steps(steps, tmp_path, docs, say=lambda m: None) == ["fails", "no_file"]
    assert (docs / "table.md").read_text() == "old"
    ok = Step("ok", [sys.executable, "-c", write], "out", {"t.md": "table.md"})
    assert run_steps([ok], tmp_path, docs, say=lambda m: None) == []
    assert (docs / "table.md").read_text() == "new"


def test_regenerate_docs_refuses_an_unknown_step_in_one_line():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "tools" / "regenerate_docs.py"), "--only", "bogus"],
                            capture_output=True, text=True, cwd=root)
    assert result.returncode == 2
    assert "unknown step(s) ['bogus']; steps: ['synthetic_shapes'" in result.stderr.strip().splitlines()[-1]
