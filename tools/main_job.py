#!/usr/bin/env python
"""The main job: the same detector trained twice, once with an FPN and once with a BiFPN
neck, on the built-in synthetic dataset, on CPU; then a side-by-side comparison.

    python tools/main_job.py                 # about 20 minutes on 2 CPU cores
    python tools/main_job.py --quick         # a smoke run of a few seconds (tiny dataset)
    python tools/main_job.py --iters 3000 --output-dir output/longer

Each model is trained and evaluated (COCO AP on ``synthetic_shapes_val``) by
``tools/train_net.py`` in a subprocess whose progress (iteration, losses, ETA) is shown as
it runs. The output directory (default ``output/main_job``) receives:

- ``results.md`` and ``results.csv``: the table printed at the end (AP, AP50, AP75,
  AP small/medium/large, parameters, GFLOPs on one image, seconds per training iteration);
- ``results.png``: training loss against iteration for both models, and their APs;
- ``fpn/`` and ``bifpn/``: each run's ``train_net.py`` output (``log.txt``,
  ``metrics.json``, checkpoints, TensorBoard events).

A run directory that already holds a checkpoint is resumed (a finished run is only
evaluated again); ``--overwrite`` trains from scratch instead.
"""

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis
from matplotlib.figure import Figure
from train_net import checkpoints_in, load_config  # tools/ is on sys.path when run as a script

from bifpn_d2.data import ensure_generated

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent

__all__ = ["Run", "RUNS", "QUICK_OVERRIDES", "as_opts", "main"]


@dataclass
class Run:
    """One model of the comparison and, once done, what was measured."""

    label: str
    config: str  # relative to the repository root
    subdir: str
    metrics: Dict[str, float] = field(default_factory=dict)  # bbox/AP, ... (COCO, in %)
    iterations: List[int] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)
    sec_per_iter: float = math.nan
    train_minutes: float = math.nan
    params_m: float = math.nan
    neck_params_m: float = math.nan
    gflops: float = math.nan


RUNS = (
    Run("FPN", "configs/synthetic/RetinaNet-R18-FPN.yaml", "fpn"),
    Run("BiFPN", "configs/synthetic/RetinaNet-R18-BiFPN.yaml", "bifpn"),
)

# --quick: the tiny dataset (16 / 8 images of 128 px), a handful of iterations.
QUICK_OVERRIDES = {
    "DATASETS.TRAIN": "('synthetic_shapes_tiny_train',)",
    "DATASETS.TEST": "('synthetic_shapes_tiny_val',)",
    "INPUT.MIN_SIZE_TRAIN": "(128,)",
    "INPUT.MAX_SIZE_TRAIN": "128",
    "INPUT.MIN_SIZE_TEST": "128",
    "INPUT.MAX_SIZE_TEST": "128",
    "SOLVER.IMS_PER_BATCH": "2",
    "SOLVER.WARMUP_ITERS": "2",
    "SOLVER.CHECKPOINT_PERIOD": "100000",
    "DATALOADER.NUM_WORKERS": "0",
}
QUICK_ITERS = 2

METRICS = [
    ("AP", "bbox/AP"),
    ("AP50", "bbox/AP50"),
    ("AP75", "bbox/AP75"),
    ("AP_small", "bbox/APs"),
    ("AP_medium", "bbox/APm"),
    ("AP_large", "bbox/APl"),
]

# Lines of train_net.py's output worth showing live; everything is in <run>/log.txt.
_SHOWN = (
    "d2.utils.events",
    "Starting training",
    "Overall training speed",
    "Start inference",
    "Total inference time",
    "copypaste: ",
    "Error",
    "error:",
)


def as_opts(overrides: Dict[str, str]) -> List[str]:
    """``{"KEY": "VALUE"}`` -> ``["KEY", "VALUE", ...]``, as train_net.py's command line takes them."""
    return [item for pair in overrides.items() for item in pair]


def _say(message: str) -> None:
    print(f"[main_job] {message}", flush=True)


def schedule_overrides(config: str, iters: int) -> List[str]:
    """``SOLVER.MAX_ITER`` = ``iters``, with the LR steps and warmup scaled to match."""
    cfg = load_config(str(ROOT / config))
    scale = iters / cfg.SOLVER.MAX_ITER
    # Milestones must stay strictly increasing and below MAX_ITER (short runs merge them).
    scaled = {max(1, round(step * scale)) for step in cfg.SOLVER.STEPS}
    steps = tuple(sorted(step for step in scaled if step < iters))
    warmup = max(1, min(cfg.SOLVER.WARMUP_ITERS, round(cfg.SOLVER.WARMUP_ITERS * scale)))
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps), "SOLVER.WARMUP_ITERS", str(warmup)]


def train(run: Run, output_dir: Path, overrides: Sequence[str], overwrite: bool, threads: int) -> None:
    """Train and evaluate ``run`` with ``tools/train_net.py`` in a subprocess, streaming its
    progress; resumes a run directory that already holds checkpoints unless ``overwrite``."""
    command = [sys.executable, str(TOOLS / "train_net.py"), "--config-file", str(ROOT / run.config)]
    if overwrite:
        command.append("--overwrite")
    elif checkpoints_in(str(output_dir)):
        _say(f"{run.label}: {output_dir} holds a previous run: resuming it (--overwrite trains again)")
        command.append("--resume")
    command += ["OUTPUT_DIR", str(output_dir), *overrides]
    # PASSIVE: idle OpenMP threads sleep instead of spinning. On a machine shared with other
    # jobs, spinning threads were measured to make 2-thread training 4x slower.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tail: List[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    ) as process:
        for line in process.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            if any(key in line for key in _SHOWN):
                print(f"  [{run.label}] {line.rstrip()}", flush=True)
    if process.returncode != 0:
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(
            f"[main_job] training {run.label} failed (exit status {process.returncode}); "
            f"see {output_dir / 'log.txt'}"
        )


def read_metrics(run: Run, output_dir: Path) -> None:
    """Fill ``run``'s loss curve, timing and final COCO metrics from ``metrics.json``."""
    times = []
    with open(output_dir / "metrics.json") as f:
        for line in f:
            record = json.loads(line)
            if "total_loss" in record:
                run.iterations.append(record["iteration"])
                run.losses.append(record["total_loss"])
            if "time" in record:
                times.append(record["time"])
            if "bbox/AP" in record:
                run.metrics = {k: float(v) for k, v in record.items() if k.startswith("bbox/")}
    if times:
        run.sec_per_iter = sorted(times)[len(times) // 2]
        run.train_minutes = run.sec_per_iter * (run.iterations[-1] + 1) / 60 if run.iterations else math.nan


def measure_cost(run: Run, overrides: Sequence[str]) -> None:
    """Parameters (whole model and neck) and fvcore GFLOPs of one inference on the first
    test image (fvcore counts one multiply-add as one flop)."""
    cfg = load_config(str(ROOT / run.config), list(overrides) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    backbone = model.backbone
    run.params_m = sum(p.numel() for p in model.parameters()) / 1e6
    bottom_up = sum(p.numel() for p in backbone.bottom_up.parameters())
    run.neck_params_m = (sum(p.numel() for p in backbone.parameters()) - bottom_up) / 1e6
    dataset = cfg.DATASETS.TEST[0]
    image = DatasetMapper(cfg, is_train=False)(DatasetCatalog.get(dataset)[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the tracer's torch.jit deprecation notices
        flops = FlopCountAnalysis(model, [image])
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        run.gflops = flops.total() / 1e9


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table_rows(runs: Sequence[Run], image_size: str, batch: int) -> List[List[str]]:
    """Rows of the side-by-side table: one per quantity, one column per run."""
    rows = [[name] + [_fmt(r.metrics.get(key, math.nan)) for r in runs] for name, key in METRICS]
    rows += [
        ["params (M)"] + [_fmt(r.params_m, 2) for r in runs],
        ["neck params (M)"] + [_fmt(r.neck_params_m, 3) for r in runs],
        [f"GFLOPs ({image_size})"] + [_fmt(r.gflops, 2) for r in runs],
        [f"s / iter (train, batch {batch})"] + [_fmt(r.sec_per_iter, 3) for r in runs],
        ["train time (min)"] + [_fmt(r.train_minutes, 1) for r in runs],
    ]
    return rows


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, runs: Sequence[Run]) -> None:
    """One row per model, with the full-precision values."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["model", "config"]
            + [name for name, _ in METRICS]
            + ["params_M", "neck_params_M", "GFLOPs", "sec_per_iter", "train_minutes"]
        )
        for r in runs:
            writer.writerow(
                [r.label, r.config]
                + [r.metrics.get(key, math.nan) for _, key in METRICS]
                + [r.params_m, r.neck_params_m, r.gflops, r.sec_per_iter, r.train_minutes]
            )


def plot(path: Path, runs: Sequence[Run], title: str) -> None:
    """Left: training loss vs iteration; right: COCO APs side by side."""
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    for r in runs:
        left.plot(r.iterations, r.losses, label=r.label, linewidth=1.5)
    left.set(xlabel="iteration", ylabel="total training loss", title="Training loss")
    left.set_yscale("log")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    names = [name for name, _ in METRICS]
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        values = [r.metrics.get(key, math.nan) for _, key in METRICS]
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(names))]
        bars = right.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=r.label)
        right.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7, padding=1)
    right.set_xticks(range(len(names)), names)
    right.set(ylabel="COCO AP (%)", title="Validation AP")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> List[Run]:
    """Run the comparison; returns the measured runs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="training iterations per model (default: the configs' SOLVER.MAX_ITER)",
    )
    parser.add_argument("--output-dir", default="output/main_job", help="where results and runs go")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run on the tiny dataset")
    parser.add_argument("--overwrite", action="store_true", help="train again over previous runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for PyTorch (default: all cores)",
    )
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    runs = [Run(r.label, r.config, r.subdir) for r in RUNS]
    base = as_opts(QUICK_OVERRIDES) if args.quick else []
    iters = args.iters or (QUICK_ITERS if args.quick else None)

    start = time.perf_counter()
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        _say(
            f"note: the machine is busy (load average {load:.1f} on {os.cpu_count()} cores); "
            "the timings and the ~20 minute budget assume an idle machine"
        )
    cfg = load_config(str(ROOT / runs[0].config), base)
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        _say(f"dataset {name}: generating it if needed (first run only, about a minute)")
        ensure_generated(name)
    for i, run in enumerate(runs, 1):
        overrides = base + (schedule_overrides(run.config, iters) if iters else [])
        _say(f"({i}/{len(runs)}) {run.label}: training {run.config} -> {output_dir / run.subdir}")
        train(run, output_dir / run.subdir, overrides, args.overwrite, args.threads)
        read_metrics(run, output_dir / run.subdir)
        measure_cost(run, overrides)

    image_size = f"1 image {cfg.INPUT.MIN_SIZE_TEST}x{cfg.INPUT.MIN_SIZE_TEST}"
    header = ["", *[r.label for r in runs]]
    markdown = to_markdown(header, table_rows(runs, image_size, cfg.SOLVER.IMS_PER_BATCH))
    done_iters = runs[0].iterations[-1] + 1 if runs[0].iterations else 0
    title = (
        f"{' vs '.join(r.label for r in runs)} on {cfg.DATASETS.TEST[0]}: {cfg.MODEL.META_ARCHITECTURE} "
        f"R{cfg.MODEL.RESNETS.DEPTH}, from scratch, {done_iters} iterations"
    )
    (output_dir / "results.md").write_text(f"{title}\n\n{markdown}\n")
    write_csv(output_dir / "results.csv", runs)
    plot(output_dir / "results.png", runs, title)
    print(f"\n{title}\n\n{markdown}\n")
    _say(
        f"done in {(time.perf_counter() - start) / 60:.1f} min; wrote "
        f"{output_dir / 'results.md'}, results.csv, results.png"
    )
    return runs


if __name__ == "__main__":
    main()
