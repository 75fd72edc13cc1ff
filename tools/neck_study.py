#!/usr/bin/env python
"""The neck study: train the main job's detector with each neck variant ("arm") and
several seeds on the built-in dataset, then tabulate and plot mean and spread of AP.

    python tools/neck_study.py                          # every arm, seeds 0 and 1
    python tools/neck_study.py --arms reference "top block" --seeds 0 1 2
    python tools/neck_study.py --list                   # the arms and what each tests
    python tools/neck_study.py --quick                  # smoke run on the tiny dataset
    python tools/neck_study.py --jobs 8 --output-dir output/neck_study_cuda MODEL.DEVICE cuda

Arms are named or chosen by group (see ``--list``); they are defined in
``benchmarks.neck_study``. Runs go ``--jobs`` at a time with ``--threads`` each
(default: one single-thread run per core, which trains more iterations per second on a
CPU than one run over all cores). A finished run is reused when its command has not
changed, so the study can be interrupted and resumed, or extended by more seeds.

The output directory (default ``output/neck_study``) receives ``neck_study.md`` /
``.csv`` (one row per arm), ``neck_study.png`` (AP per arm, seeds as dots),
``neck_study_schedule.png`` (AP against iterations, for arms evaluated during training)
and ``neck_study_fusion.png`` (normalised fusion weights over training, fast normalized
against softmax: EfficientDet's Figure 6), and each run's Detectron2 output directory.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks.comparison import ROOT, measure_cost, run_all, schedule_overrides
from benchmarks.neck_study import ARMS, GROUPS, arm_runs, fusion_speed, summarize_arms, write_report
from bifpn_d2.data import TINY_OVERRIDES, ensure_generated
from bifpn_d2.engine.config import ConfigError, load_config

QUICK_ITERS = 2


def say(message: str) -> None:
    print(f"[neck_study] {message}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=["all"], help="arm names or groups (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--iters", type=int, help="iterations of a 1x arm (default: the config's MAX_ITER)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run")
    parser.add_argument("--output-dir", default="output/neck_study")
    parser.add_argument("--quick", action="store_true", help="tiny dataset, a few iterations (smoke test)")
    parser.add_argument("--list", action="store_true", help="list the arms and exit")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: tabulate the runs already finished"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every run (e.g. MODEL.DEVICE cuda)"
    )
    args = parser.parse_args(argv)

    if args.list:
        for arm in ARMS:
            print(f"{arm.name:20s} {arm.group:14s} {arm.question}")
        return
    unknown = [a for a in args.arms if a != "all" and a not in GROUPS and a not in {arm.name for arm in ARMS}]
    if unknown:
        parser.error(f"unknown arms {unknown}; arms: {[a.name for a in ARMS]}, groups: {GROUPS}, or all")
    if args.jobs < 1 or args.threads < 1 or (args.iters is not None and args.iters < 1):
        parser.error("--jobs, --threads and --iters must be >= 1")
    arms = [a for a in ARMS if "all" in args.arms or a.name in args.arms or a.group in args.arms]

    base_opts = (TINY_OVERRIDES if args.quick else []) + args.opts
    # Configs read here only for the schedule, datasets and costs (measured on the CPU),
    # so a study trained on a GPU can be tabulated on a machine without one.
    on_cpu = ["MODEL.DEVICE", "cpu"]
    reference = load_config(str(ROOT / arms[0].config), base_opts + on_cpu)
    device = dict(zip(args.opts[::2], args.opts[1::2])).get("MODEL.DEVICE", "cpu")
    solver = reference.SOLVER
    iters = args.iters or (QUICK_ITERS if args.quick else solver.MAX_ITER)

    def schedule(arm):
        total = iters * arm.iters_factor
        opts = schedule_overrides(solver.MAX_ITER, solver.STEPS, solver.WARMUP_ITERS, total)
        return opts + ["TEST.EVAL_PERIOD", str(total // arm.eval_points if arm.eval_points > 1 else 0)]

    output_dir = Path(args.output_dir).resolve()
    for name in reference.DATASETS.TRAIN + reference.DATASETS.TEST:
        ensure_generated(name)
    results = arm_runs(arms, args.seeds, output_dir, base_opts, schedule)
    say(f"{len(arms)} arms x {len(args.seeds)} seeds, {args.jobs} at a time, {args.threads} thread(s) each")
    if args.report_only:  # is_done() reads each finished run's metrics
        results = [(arm, run) for arm, run in results if run.is_done()]
        arms = [arm for arm in arms if any(a is arm for a, _ in results)]
        if not results:
            parser.error(f"--report-only: no finished run in {output_dir}")
    else:
        longest_first = sorted(results, key=lambda pair: -pair[0].iters_factor)
        run_all([run for _, run in longest_first], args.jobs, args.threads, say)

    costs = {}
    for arm in arms:
        cfg = load_config(str(ROOT / arm.config), base_opts + arm.opts() + on_cpu)
        costs[arm.name] = measure_cost(cfg)
    rows = summarize_arms(results, costs)
    speed = fusion_speed() if not args.quick else {}
    title = (
        f"{reference.MODEL.META_ARCHITECTURE} R{reference.MODEL.RESNETS.DEPTH} on "
        f"{reference.DATASETS.TEST[0]}, {iters} iterations (1x), seeds {', '.join(map(str, args.seeds))}, "
        f"trained on {device}"
    )
    for path in write_report(rows, results, speed, output_dir, title):
        say(f"wrote {path}")
    print((output_dir / "neck_study.md").read_text())


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"neck_study.py: error: {e}", file=sys.stderr)
        sys.exit(2)
