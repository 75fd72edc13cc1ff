"""Train several detector configs and collect what they measured: the machinery of the main
job and of the neck study.

Each :class:`Run` is one training of one config (plus overrides and a seed) by the
training script, in a subprocess with its own thread count, so that runs can go side by
side on a multi-core machine and each leaves a complete Detectron2 output directory
(``log.txt``, ``metrics.json``, ``config.yaml``). A finished run whose recorded command
matches is reused instead of trained again; anything else in its directory is replaced.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "METRICS",
    "Run",
    "measure_cost",
    "read_metrics",
    "run_all",
    "schedule_overrides",
    "summarize",
]

# What the tables show of Detectron2's COCO evaluation: (column, metrics.json key), in %.
METRICS = [
    ("AP", "bbox/AP"),
    ("AP50", "bbox/AP50"),
    ("AP75", "bbox/AP75"),
    ("AP_small", "bbox/APs"),
    ("AP_medium", "bbox/APm"),
    ("AP_large", "bbox/APl"),
]

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "tools" / "train_net.py"
RECORD = "comparison_run.json"  # the recipe a run directory was trained with

# Lines of the training script's output worth showing live; everything is in log.txt.
_SHOWN = ("d2.utils.events", "Overall training speed", "copypaste: AP", "Error", "error:")


@dataclass
class Run:
    """One training of ``config`` with ``overrides`` and ``seed`` into ``output_dir``; once
    read back, what it measured."""

    label: str
    config: str
    output_dir: Path
    overrides: Tuple[str, ...] = ()
    seed: int = 0
    metrics: Dict[str, float] = field(default_factory=dict)  # final COCO metrics, in %
    ap_curve: List[Tuple[int, float]] = field(default_factory=list)  # (iteration, AP) of every evaluation
    iterations: List[int] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)
    scalars: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)  # other logged series
    sec_per_iter: float = math.nan
    train_minutes: float = math.nan

    def command(self) -> List[str]:
        """The training command line; it trains afresh over whatever the directory holds."""
        return [
            sys.executable,
            str(TRAIN_SCRIPT),
            "--config-file",
            self.config,
            "--overwrite",
            "OUTPUT_DIR",
            str(self.output_dir),
            "SEED",
            str(self.seed),
            *self.overrides,
        ]

    def recipe(self) -> dict:
        """What the run trains (config, overrides, seed): equal recipes give equal runs."""
        return {"config": self.config, "overrides": list(self.overrides), "seed": self.seed}

    def is_done(self) -> bool:
        """Trained to the end with this recipe and evaluated."""
        path = self.output_dir / RECORD
        if not path.is_file() or json.loads(path.read_text()) != self.recipe():
            return False
        read_metrics(self)
        return bool(self.metrics)


def schedule_overrides(max_iter: int, steps: Sequence[int], warmup: int, iters: int) -> List[str]:
    """Overrides that train ``iters`` iterations instead of ``max_iter``, the LR steps and
    warmup scaled to match (milestones kept strictly increasing and below ``iters``)."""
    scale = iters / max_iter
    scaled = {max(1, round(step * scale)) for step in steps}
    new_steps = tuple(sorted(step for step in scaled if step < iters))
    new_warmup = max(1, min(warmup, round(warmup * scale)))
    return [
        "SOLVER.MAX_ITER",
        str(iters),
        "SOLVER.STEPS",
        str(new_steps),
        "SOLVER.WARMUP_ITERS",
        str(new_warmup),
    ]


def read_metrics(run: Run) -> Run:
    """Fill ``run``'s loss curve, evaluations, other scalars and timing from its
    ``metrics.json`` (one JSON record per logged iteration)."""
    run.metrics, run.ap_curve, run.iterations, run.losses, run.scalars = {}, [], [], [], {}
    path = run.output_dir / "metrics.json"
    if not path.is_file():
        return run
    times = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            iteration = record.get("iteration", -1)
            if "total_loss" in record:
                run.iterations.append(iteration)
                run.losses.append(record["total_loss"])
            if "time" in record:
                times.append(record["time"])
            if "bbox/AP" in record:
                run.metrics = {k: float(v) for k, v in record.items() if k.startswith("bbox/")}
                run.ap_curve.append((iteration + 1, float(record["bbox/AP"])))
            for key, value in record.items():
                if key.startswith("fusion/"):
                    run.scalars.setdefault(key, []).append((iteration + 1, float(value)))
    if times:
        run.sec_per_iter = sorted(times)[len(times) // 2]
        last = run.iterations[-1] + 1 if run.iterations else 0
        run.train_minutes = run.sec_per_iter * last / 60
    return run


def _start(run: Run, threads: int) -> subprocess.Popen:
    run.output_dir.mkdir(parents=True, exist_ok=True)
    (run.output_dir / RECORD).unlink(missing_ok=True)
    # PASSIVE: idle OpenMP threads sleep instead of spinning; runs side by side (or any
    # other load) were measured to slow spinning 2-thread training down 4x.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log = open(run.output_dir / "stdout.txt", "w")
    process = subprocess.Popen(
        run.command(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    process.log = log  # type: ignore[attr-defined]
    return process


def run_all(
    runs: Sequence[Run],
    jobs: int = 1,
    threads: int = 1,
    say: Callable[[str], None] = print,
) -> List[Run]:
    """Train every run not already done, ``jobs`` at a time with ``threads`` each, showing
    progress (iterations, losses, ETA of each, and of the whole) as they go; then read
    every run's metrics. A failed run stops everything after the running ones finish.

    Raises:
        RuntimeError: a training exited with an error (its log is named).
    """
    todo = [r for r in runs if not r.is_done()]
    for run in runs:
        if run not in todo:
            say(f"{run.label} seed {run.seed}: done before, reusing {run.output_dir}")
    start, durations = time.perf_counter(), []
    running: Dict[int, Tuple[Run, subprocess.Popen, float]] = {}
    failed: List[str] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < jobs and not failed:
            run = queue.pop(0)
            process = _start(run, threads)
            os.set_blocking(process.stdout.fileno(), False)
            running[process.pid] = (run, process, time.perf_counter())
            say(f"start {run.label} seed {run.seed} -> {run.output_dir}")
        for pid, (run, process, started) in list(running.items()):
            for line in iter(process.stdout.readline, ""):
                process.log.write(line)
                if any(key in line for key in _SHOWN):
                    say(f"  [{run.label}] s{run.seed} {line.rstrip()}")
            if process.poll() is None:
                continue
            rest = process.stdout.read() or ""
            process.log.write(rest)
            process.log.close()
            del running[pid]
            if process.returncode != 0:
                failed.append(
                    f"{run.label} seed {run.seed} (exit status {process.returncode}, see "
                    f"{run.output_dir / 'stdout.txt'})"
                )
                continue
            (run.output_dir / RECORD).write_text(json.dumps(run.recipe()))
            read_metrics(run)
            durations.append(time.perf_counter() - started)
            left = len(queue) + len(running)
            eta = sum(durations) / len(durations) * left / max(1, min(jobs, left)) if left else 0.0
            say(
                f"done {run.label} seed {run.seed}: AP {run.metrics.get('bbox/AP', math.nan):.1f} "
                f"({len(todo) - left}/{len(todo)} trained, {(time.perf_counter() - start) / 60:.1f} min; "
                f"about {eta / 60:.0f} min to go)"
            )
        time.sleep(0.5)
    if failed:
        raise RuntimeError("training failed: " + "; ".join(failed))
    return [read_metrics(r) for r in runs]


def measure_cost(cfg) -> Dict[str, float]:
    """Parameters (whole model and neck, in millions) and fvcore GFLOPs of one inference
    on the first image of ``cfg.DATASETS.TEST[0]`` (one multiply-add counted as one flop)."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model

    from .measure import count_flops, count_parameters

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    backbone = model.backbone
    neck = count_parameters(backbone) - count_parameters(backbone.bottom_up)
    image = DatasetMapper(cfg, is_train=False)(DatasetCatalog.get(cfg.DATASETS.TEST[0])[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation notices
        flops = count_flops(model, [image])
    return {"params_M": count_parameters(model) / 1e6, "neck_params_M": neck / 1e6, "GFLOPs": flops / 1e9}


def mean_and_sd(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation of the non-NaN ``values`` (NaN where undefined)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(groups: Dict[str, Sequence[Run]], reference: Optional[str] = None) -> List[Dict[str, object]]:
    """One row per ``{label: runs}`` entry (the runs are its seeds): the mean of each COCO
    metric over the seeds, the sample standard deviation and every seed's AP, the mean
    AP's difference to the ``reference`` label, and the mean seconds per iteration."""
    ref_ap = mean_and_sd([r.metrics.get("bbox/AP", math.nan) for r in groups.get(reference, [])])[0]
    rows = []
    for label, runs in groups.items():
        ap, sd = mean_and_sd([r.metrics.get("bbox/AP", math.nan) for r in runs])
        row: Dict[str, object] = {
            "model": label,
            "seeds": " ".join(str(r.seed) for r in runs),
            "AP": ap,
            "AP sd": sd,
            "AP per seed": " / ".join(f"{r.metrics.get('bbox/AP', math.nan):.1f}" for r in runs),
        }
        if reference is not None:
            row[f"AP - {reference}"] = ap - ref_ap
        for column, key in METRICS[1:]:
            row[column] = mean_and_sd([r.metrics.get(key, math.nan) for r in runs])[0]
        row["s/iter"] = mean_and_sd([r.sec_per_iter for r in runs])[0]
        row["train min"] = mean_and_sd([r.train_minutes for r in runs])[0]
        rows.append(row)
    return rows
