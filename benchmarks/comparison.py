"""Train several detector configs and collect what they measured: the machinery of the main
job and of the neck study.

Each :class:`Run` is one training of one config (plus overrides and a seed) by the
training script, in a subprocess with its own thread count, so that runs can go side by
side on a multi-core machine and each leaves a complete Detectron2 output directory
(``log.txt``, ``metrics.json``, ``config.yaml``). A finished run whose recorded command
matches is reused instead of trained again; anything else in its directory is replaced.
"""

import argparse
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
    "mean_and_sd",
    "primary_metric",
    "read_metrics",
    "add_run_arguments",
    "tiny_splits",
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
    # The metric that ranks runs: "bbox/AP", "segm/AP", "sem_seg/mIoU", ...
    primary: str = "bbox/AP"
    # The test dataset that ranks runs, its progress line and its curve (None: the only one).
    dataset: Optional[str] = None
    # Final evaluation, in %: "<task>/<metric>" with one test dataset, else
    # "<dataset>/<task>/<metric>" (Detectron2's keys in metrics.json).
    metrics: Dict[str, float] = field(default_factory=dict)
    # (iteration, primary metric on ``dataset``) of every evaluation
    ap_curve: List[Tuple[int, float]] = field(default_factory=list)
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

    def value(self, metric: str, dataset: Optional[str] = None) -> float:
        """``metric`` ("bbox/AP", ...) of the final evaluation on ``dataset`` (None: the only
        test dataset; of several, the first key in ``metrics.json``, which sorts its keys);
        NaN if it was not measured."""
        if dataset is not None and f"{dataset}/{metric}" in self.metrics:
            return self.metrics[f"{dataset}/{metric}"]
        if dataset is None or metric in self.metrics:  # one test dataset: keys without its name
            for key, value in self.metrics.items():
                if key == metric or key.endswith("/" + metric):
                    return value
        return math.nan

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


# The task part of Detectron2's evaluation keys ("[<dataset>/]<task>/<metric>").
EVALUATION_TASKS = ("bbox", "segm", "sem_seg", "panoptic_seg", "keypoints")


def _is_evaluation_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 2 and parts[-2] in EVALUATION_TASKS


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
            evaluation = {k: float(v) for k, v in record.items() if _is_evaluation_key(k)}
            if evaluation:
                run.metrics = evaluation
                run.ap_curve.append((iteration + 1, run.value(run.primary, run.dataset)))
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
                f"done {run.label} seed {run.seed}: {run.primary} {run.value(run.primary, run.dataset):.1f} "
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


def primary_metric(cfg) -> str:
    """The metric a config's model is judged by: ``sem_seg/mIoU`` for a semantic
    segmenter, ``panoptic_seg/PQ`` for Panoptic FPN, ``segm/AP`` for a model with masks,
    else ``bbox/AP``."""
    meta = cfg.MODEL.META_ARCHITECTURE
    if meta == "SemanticSegmentor":
        return "sem_seg/mIoU"
    if meta == "PanopticFPN":
        return "panoptic_seg/PQ"
    return "segm/AP" if cfg.MODEL.MASK_ON else "bbox/AP"


def summarize(
    groups: Dict[str, Sequence[Run]],
    reference: Optional[str] = None,
    primary: str = "bbox/AP",
    datasets: Sequence[Optional[str]] = (None,),
) -> List[Dict[str, object]]:
    """One row per ``{label: runs}`` entry (the runs are its seeds). On the first of
    ``datasets`` (None: a run's only test dataset): the ``primary`` metric's mean over the
    seeds, sample standard deviation, every seed's value and the mean's difference to the
    ``reference`` label, then the mean of each COCO metric of :data:`METRICS` (same task);
    on each further dataset, the primary metric's mean and difference; then the mean
    seconds per iteration and training minutes. Columns are named by the metric ("AP",
    "mIoU", ...) and, after the first dataset, prefixed by the dataset's name."""
    task, name = primary.rsplit("/", 1)

    def mean(runs: Sequence[Run], metric: str, dataset: Optional[str]) -> float:
        return mean_and_sd([r.value(metric, dataset) for r in runs])[0]

    rows = []
    for label, runs in groups.items():
        first = datasets[0]
        value, sd = mean_and_sd([r.value(primary, first) for r in runs])
        row: Dict[str, object] = {
            "model": label,
            "seeds": " ".join(str(r.seed) for r in runs),
            name: value,
            f"{name} sd": sd,
            f"{name} per seed": " / ".join(f"{r.value(primary, first):.1f}" for r in runs),
        }
        if reference is not None:
            row[f"{name} - {reference}"] = value - mean(groups.get(reference, []), primary, first)
        if task in ("bbox", "segm"):
            for column, key in METRICS[1:]:
                row[column] = mean(runs, f"{task}/{key.split('/', 1)[1]}", first)
        for dataset in datasets[1:]:
            row[f"{dataset} {name}"] = mean(runs, primary, dataset)
            if reference is not None:
                row[f"{dataset} {name} - {reference}"] = (
                    row[f"{dataset} {name}"] - mean(groups.get(reference, []), primary, dataset))
        row["s/iter"] = mean_and_sd([r.sec_per_iter for r in runs])[0]
        row["train min"] = mean_and_sd([r.train_minutes for r in runs])[0]
        rows.append(row)
    return rows


# --quick: the tiny splits (16 / 8 images of 128 px), a handful of iterations.
QUICK_ITERS = 2


def tiny_splits(task_suffix: str = "") -> List[str]:
    """``DATASETS.TRAIN`` / ``TEST`` overrides: the tiny synthetic splits of one task
    (``""`` instances, ``"_sem_seg"`` semantic maps)."""
    return ["DATASETS.TRAIN", f"('synthetic_shapes_tiny_train{task_suffix}',)",
            "DATASETS.TEST", f"('synthetic_shapes_tiny_val{task_suffix}',)"]


def _tiny_overrides(cfg) -> List[str]:
    """The tiny synthetic splits for the task of ``cfg``'s datasets, at their 128 px."""
    from bifpn_d2.data import TINY_OVERRIDES

    suffix = "_sem_seg" if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor" else ""
    return TINY_OVERRIDES + tiny_splits(suffix) + ["SOLVER.CHECKPOINT_PERIOD", "100000"]


def compare_necks(
    config_file: str,
    opts: Sequence[str] = (),
    seeds: Sequence[int] = (0, 1),
    output_dir: Path = Path("output/compare_necks"),
    jobs: int = 1,
    threads: int = 1,
    iters: Optional[int] = None,
    quick: bool = False,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> Tuple[List[Dict[str, object]], List[str]]:
    """Train ``config_file`` (a Detectron2 YAML config with an FPN: ours, Detectron2's model
    zoo, a user's) and its BiFPN switch (the same config with ``MODEL.BACKBONE.NAME``
    switched to the BiFPN builder: the recommended recipe, by the ``MODEL.BIFPN``
    defaults) side by side over ``seeds``, each evaluated on the config's
    ``DATASETS.TEST``; write ``results.md`` / ``.csv`` / ``.png`` into ``output_dir``.

    Everything that can go wrong before training is checked first, in this process: the
    config, that it has an FPN to switch, its datasets, both models (built on the CPU,
    which also measures their parameters and GFLOPs).

    Returns:
        the table's rows (one per neck) and its columns.
    Raises:
        ConfigError: any of the above (one line, naming the problem); RuntimeError: a
            training failed (its log is named).
    """
    from types import SimpleNamespace

    from bifpn_d2.data import ensure_generated
    from bifpn_d2.engine.config import ConfigError, load_config, resolve_config_file
    from bifpn_d2.engine.launch import check_datasets
    from bifpn_d2.modeling import bifpn_switch

    config_file = str(Path(resolve_config_file(config_file)).resolve())
    cfg = load_config(config_file, list(opts))
    base = _tiny_overrides(cfg) if quick else []
    cfg = load_config(config_file, base + list(opts))
    try:
        switched = bifpn_switch(cfg.MODEL.BACKBONE.NAME)
    except ValueError as e:
        raise ConfigError(f"{config_file}: {e}") from None
    iters = iters or (QUICK_ITERS if quick else None)
    schedule = (schedule_overrides(cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, iters)
                if iters else [])
    necks = {"FPN": base + list(opts) + schedule,
             "BiFPN": base + list(opts) + schedule + ["MODEL.BACKBONE.NAME", switched]}
    check_datasets(cfg, SimpleNamespace(eval_only=False))
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        ensure_generated(name)
    costs = {}
    for neck, neck_opts in necks.items():
        try:
            costs[neck] = measure_cost(load_config(config_file, neck_opts))
        except (ValueError, KeyError) as e:
            raise ConfigError(f"cannot build the {neck} model of {config_file}: {e}") from None
    output_dir = Path(output_dir).resolve()
    primary = primary_metric(cfg)
    datasets: List[Optional[str]] = list(cfg.DATASETS.TEST) if len(cfg.DATASETS.TEST) > 1 else [None]
    runs = {
        neck: [Run(neck, config_file, output_dir / neck.lower() / f"seed{seed}", tuple(neck_opts), seed,
                   primary=primary, dataset=datasets[0]) for seed in seeds]
        for neck, neck_opts in necks.items()
    }
    if overwrite:
        for run in sum(runs.values(), []):
            (run.output_dir / RECORD).unlink(missing_ok=True)
    say(f"FPN vs BiFPN ({switched}) x seeds {list(seeds)}: {jobs} at a time, {threads} thread(s) each")
    run_all(sum(runs.values(), []), jobs, threads, say)

    rows = summarize(runs, "FPN", primary, datasets)
    for row in rows:
        row.update(costs[str(row["model"])])
    columns = [c for c in rows[0] if c not in ("s/iter", "train min")]
    columns += ["params_M", "neck_params_M", "GFLOPs", "s/iter", "train min"]
    columns = list(dict.fromkeys(columns))
    done = runs["FPN"][0].iterations[-1] + 1 if runs["FPN"][0].iterations else 0
    title = (f"FPN vs BiFPN: {Path(config_file).name} ({cfg.MODEL.META_ARCHITECTURE}), {done} iterations, "
             f"batch {cfg.SOLVER.IMS_PER_BATCH}, seeds {list(seeds)}, {primary} on "
             f"{', '.join(cfg.DATASETS.TEST)}")
    note = (f"GFLOPs: one image of {cfg.DATASETS.TEST[0]} (fvcore, multiply-add = 1). s/iter: median of the "
            f"logged iterations, {jobs} run(s) side by side, {threads} thread(s) each.")
    from .plots import plot_comparison
    from .report import markdown_table, write_csv, write_text

    shown = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    table = markdown_table(shown, columns)
    write_text(f"{title}\n\n{table}\n{note}\n", str(output_dir / "results.md"))
    write_csv(rows, str(output_dir / "results.csv"), columns)
    plot_comparison(runs, str(output_dir / "results.png"), title, primary, datasets)
    print(f"\n{title}\n\n{table}\n{note}\n")
    return rows, columns


def comparison_parser(doc: str, output_dir: str, config_file: Optional[str] = None):
    """The command line of ``tools/compare_necks.py`` (and of the main job, which fixes the
    config to ``config_file``): ``--config-file``, ``--seeds``, ``--iters``, ``--output-dir``,
    ``--quick``, ``--overwrite``, ``--jobs``, ``--threads`` and ``KEY VALUE`` overrides."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=config_file is None, default=config_file,
                        help="a YAML config with an FPN (path or shipped name)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds per neck (default: 0 1)")
    parser.add_argument("--iters", type=int, help="training iterations (default: SOLVER.MAX_ITER)")
    parser.add_argument("--output-dir", default=output_dir, help=f"where results and runs go ({output_dir})")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run on the tiny synthetic dataset")
    parser.add_argument("--overwrite", action="store_true", help="train again over previous runs")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run (default: 1)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of both models")
    return parser


def run_comparison(args, prog: str, say: Callable[[str], None]) -> List[Dict[str, object]]:
    """:func:`compare_necks` with ``args`` of :func:`comparison_parser`; a mistake ends the
    program with one ``<prog>: error: ...`` line and exit status 2."""
    from bifpn_d2.engine.config import ConfigError

    try:
        if (args.iters is not None and args.iters < 1) or args.jobs < 1 or args.threads < 1 or not args.seeds:
            raise ConfigError("--iters, --jobs and --threads must be >= 1, and --seeds must name a seed")
        rows, _ = compare_necks(args.config_file, args.opts, args.seeds, Path(args.output_dir), args.jobs,
                                args.threads, args.iters, args.quick, args.overwrite, say)
    except (ConfigError, RuntimeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    return rows


def add_run_arguments(parser: argparse.ArgumentParser, default_dataset: str = "synthetic_shapes_dev") -> None:
    """The arguments of a tool that reads finished training runs: ``--run LABEL=DIR``
    (repeated; ``args.run`` is a list of ``(label, dir)``) and ``--dataset`` (a registered
    dataset). A malformed ``--run`` or an unregistered dataset is a one-line usage error."""
    parser.add_argument("--run", type=_run_folder, action="append", required=True, metavar="LABEL=DIR",
                        help="a training output directory, named LABEL in the table (repeat it)")
    parser.add_argument("--dataset", type=_registered_dataset, default=default_dataset,
                        help="a registered dataset")


def _run_folder(text: str) -> Tuple[str, str]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"--run takes LABEL=DIR, got {text!r}")
    return label, folder


def _registered_dataset(name: str) -> str:
    from detectron2.data import DatasetCatalog

    if name not in DatasetCatalog.list():
        raise argparse.ArgumentTypeError(f"{name!r} is not registered")
    return name
