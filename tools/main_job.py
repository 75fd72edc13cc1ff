#!/usr/bin/env python
"""The main job: the same detector trained with an FPN and with a BiFPN neck, each with
two seeds, on the built-in synthetic dataset, on CPU; then a side-by-side comparison.

    python tools/main_job.py                 # about 11 minutes on an idle 2-core CPU
    python tools/main_job.py --quick         # a smoke run of a few seconds (tiny dataset)
    python tools/main_job.py --seeds 0 1 2 --iters 600 --output-dir output/longer

Each model and seed is trained and evaluated (COCO AP on ``synthetic_shapes_val``) by
``tools/train_net.py`` in a subprocess whose progress (iteration, losses, ETA) is shown as
it runs; by default one single-thread run per core goes at a time, which trains more
iterations per second on a CPU than one run over all cores. The output directory
(default ``output/main_job``) receives:

- ``results.md`` and ``results.csv``: the table printed at the end, one row per neck: the
  mean over the seeds of AP, AP50, AP75, AP small/medium/large, the standard deviation
  and every seed's AP, parameters, GFLOPs of one image, seconds per training iteration;
- ``results.png``: training loss against iteration (every seed) and the APs (bars: mean,
  dots: seeds);
- ``<neck>/seed<k>/``: each run's ``train_net.py`` output (``log.txt``, ``metrics.json``,
  checkpoints, TensorBoard events).

A run finished before with the same recipe is reused; ``--overwrite`` trains it again.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import markdown_table, write_csv, write_text
from benchmarks.comparison import RECORD, ROOT, Run, measure_cost, run_all, schedule_overrides, summarize
from benchmarks.plots import plot_comparison
from bifpn_d2.data import TINY_OVERRIDES, ensure_generated
from bifpn_d2.engine import ConfigError, load_config

NECKS = {
    "FPN": "configs/synthetic/RetinaNet-R18-FPN.yaml",
    "BiFPN": "configs/synthetic/RetinaNet-R18-BiFPN.yaml",
}
# --quick: the tiny dataset (16 / 8 images of 128 px), a handful of iterations.
QUICK_OPTS = TINY_OVERRIDES + ["SOLVER.CHECKPOINT_PERIOD", "100000"]
QUICK_ITERS = 2
COLUMNS = [
    "model",
    "seeds",
    "AP",
    "AP sd",
    "AP per seed",
    "AP - FPN",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "params_M",
    "neck_params_M",
    "GFLOPs",
    "s/iter",
    "train min",
]


def say(message: str) -> None:
    print(f"[main_job] {message}", flush=True)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds per neck (default: 0 1)")
    parser.add_argument(
        "--iters", type=int, help="training iterations (default: the configs' SOLVER.MAX_ITER)"
    )
    parser.add_argument("--output-dir", default="output/main_job", help="where results and runs go")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run on the tiny dataset")
    parser.add_argument("--overwrite", action="store_true", help="train again over previous runs")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="runs side by side (default: cores)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run (default: 1)")
    args = parser.parse_args(argv)
    if (args.iters is not None and args.iters < 1) or args.jobs < 1 or args.threads < 1:
        parser.error("--iters, --jobs and --threads must be >= 1")

    start = time.perf_counter()
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        say(
            f"note: the machine is busy (load average {load:.1f} on {os.cpu_count()} cores); "
            "the timings and the ~20 minute budget assume an idle machine"
        )
    base = QUICK_OPTS if args.quick else []
    cfg = load_config(str(ROOT / NECKS["FPN"]), base)
    iters = args.iters or (QUICK_ITERS if args.quick else None)
    if iters:
        base = base + schedule_overrides(
            cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, iters
        )
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        say(f"dataset {name}: generating it if needed (first run only, under a minute)")
        ensure_generated(name)
    output_dir = Path(args.output_dir).resolve()
    runs = {
        neck: [
            Run(neck, config, output_dir / neck.lower() / f"seed{seed}", tuple(base), seed)
            for seed in args.seeds
        ]
        for neck, config in NECKS.items()
    }
    if args.overwrite:
        for run in sum(runs.values(), []):
            (run.output_dir / RECORD).unlink(missing_ok=True)
    say(f"{len(NECKS)} necks x seeds {args.seeds}: {args.jobs} at a time, {args.threads} thread(s) each")
    run_all(sum(runs.values(), []), args.jobs, args.threads, say)

    rows = summarize(runs, reference="FPN")
    for row, config in zip(rows, NECKS.values()):
        row.update(measure_cost(load_config(str(ROOT / config), list(base))))
    done = runs["FPN"][0].iterations[-1] + 1 if runs["FPN"][0].iterations else 0
    title = (
        f"FPN vs BiFPN on {cfg.DATASETS.TEST[0]}: {cfg.MODEL.META_ARCHITECTURE} R{cfg.MODEL.RESNETS.DEPTH} "
        f"from scratch, {done} iterations, batch {cfg.SOLVER.IMS_PER_BATCH}, seeds {args.seeds}"
    )
    note = (
        f"GFLOPs: one {cfg.INPUT.MIN_SIZE_TEST}x{cfg.INPUT.MIN_SIZE_TEST} image (fvcore, multiply-add = 1). "
        f"s/iter: median of the logged iterations, {args.jobs} run(s) side by side, "
        f"{args.threads} thread(s) each."
    )
    table = markdown_table(
        [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows], COLUMNS
    )
    write_text(f"{title}\n\n{table}\n{note}\n", str(output_dir / "results.md"))
    write_csv(rows, str(output_dir / "results.csv"), COLUMNS)
    plot_comparison(runs, str(output_dir / "results.png"), title)
    print(f"\n{title}\n\n{table}\n{note}\n")
    say(
        f"done in {(time.perf_counter() - start) / 60:.1f} min; wrote {output_dir / 'results.md'}, "
        "results.csv, results.png"
    )
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, RuntimeError) as e:
        print(f"main_job.py: error: {e}", file=sys.stderr)
        sys.exit(2)
