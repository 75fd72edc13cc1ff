#!/usr/bin/env python
"""The neck study: train the main job's detector with each neck variant ("arm") and
several seeds on the built-in dataset, then tabulate and plot mean and spread of AP.

    python tools/neck_study.py                          # every arm, seeds 0 and 1
    python tools/neck_study.py --arms reference "top block" --seeds 0 1 2
    python tools/neck_study.py --list                   # the arms and what each tests
    python tools/neck_study.py --quick                  # smoke run on the tiny dataset
    python tools/neck_study.py --jobs 8 --output-dir output/neck_study_cuda MODEL.DEVICE cuda
    python tools/neck_study.py --pool docs/a.csv docs/b.csv --output-dir output/pooled  # seeds of both

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

from benchmarks.comparison import QUICK_ITERS, ROOT, measure_cost, run_all, schedule_overrides, tiny_splits
from benchmarks.neck_study import (
    ARMS,
    CSV_COLUMNS,
    FIRST_STUDY,
    GROUPS,
    PAIRS,
    arm_runs,
    fusion_speed,
    pool_studies,
    summarize_arms,
    write_report,
)
from bifpn_d2.data import TINY_OVERRIDES, ensure_generated
from bifpn_d2.engine.config import ConfigError, load_config


def say(message: str) -> None:
    print(f"[neck_study] {message}", flush=True)


def pool(paths, output_dir: Path, arms) -> None:
    """Write the study's report over the seeds of the studies in ``paths`` (their CSVs),
    for the rows of ``arms`` (pair/name or name; "all": every row)."""
    import csv

    tables = []
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"neck_study.py: error: --pool: no such file {path!r}")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])
                       and not c.endswith("large per seed")]  # a later column
            if missing:
                raise SystemExit(f"neck_study.py: error: --pool: {path} is not a neck_study.csv: no column "
                                 f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
            rows = list(reader)
            short = [i for i, row in enumerate(rows, start=2) if None in row.values()]
            if short:
                raise SystemExit(f"neck_study.py: error: --pool: {path}: line {short[0]} has fewer fields "
                                 "than the header (a cut-short file?)")
            tables.append([row for row in rows if "all" in arms
                           or {row["arm"], f"{row['pair']}/{row['arm']}"} & set(arms)])
    if not any(tables):
        raise SystemExit(f"neck_study.py: error: --pool: no row of the arms {arms} in {paths}")
    try:
        rows = pool_studies(tables)
    except ValueError as e:  # seeds in two tables, different GFLOPs, or a value that is not a number
        raise SystemExit(f"neck_study.py: error: --pool: {e} (in {', '.join(map(str, paths))})") from None
    title = "Neck study, seeds pooled from " + ", ".join(Path(p).name for p in paths)
    report(rows, [], {}, output_dir.resolve(), title)


def report(rows, results, speed, output_dir: Path, title: str) -> None:
    """Write the study's table, CSV and plots into ``output_dir`` and print the table."""
    for path in write_report(rows, results, speed, output_dir, title):
        say(f"wrote {path}")
    print((output_dir / "neck_study.md").read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arms", nargs="+", default=["all"],
        help=f"arms (pair/name or name), groups or pairs (default: all, except the {FIRST_STUDY!r} group)",
    )
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
        "--pool", nargs="+", metavar="CSV",
        help="train nothing: pool the seeds of these neck_study.csv files (same arms, other seeds; "
        "--arms: only these rows, by pair/name or name)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every run (e.g. MODEL.DEVICE cuda)"
    )
    args = parser.parse_args(argv)

    if args.pool:
        pool(args.pool, Path(args.output_dir), args.arms)
        return
    if args.list:
        for arm in ARMS:
            print(f"{arm.key:32s} {arm.group:14s} {arm.question}")
        return
    names = {arm.name for arm in ARMS} | {arm.key for arm in ARMS} | set(GROUPS) | set(PAIRS)
    unknown = [a for a in args.arms if a != "all" and a not in names]
    if unknown:
        parser.error(f"unknown arms {unknown}; arms: {[a.key for a in ARMS]}, groups: {GROUPS}, "
                     f"pairs: {sorted(PAIRS)}, or all")
    if args.jobs < 1 or args.threads < 1 or (args.iters is not None and args.iters < 1):
        parser.error("--jobs, --threads and --iters must be >= 1")
    if min(args.seeds) < 0:
        parser.error(f"--seeds must be >= 0, got {min(args.seeds)} (a negative seed is a random one in "
                     "Detectron2: the run would not reproduce)")

    def chosen(arm) -> bool:
        if "all" in args.arms and arm.group != FIRST_STUDY:
            return True
        return bool({arm.name, arm.key, arm.group, arm.pair} & set(args.arms))

    arms = [a for a in ARMS if chosen(a)]

    base_opts = (TINY_OVERRIDES if args.quick else []) + args.opts
    # Configs read here only for the schedule, datasets and costs (measured on the CPU),
    # so a study trained on a GPU can be tabulated on a machine without one.
    on_cpu = ["MODEL.DEVICE", "cpu"]
    configs = {}
    for arm in arms:  # schedules, datasets and costs of each config
        configs.setdefault(arm.config, load_config(str(ROOT / arm.config), base_opts + arm.opts() + on_cpu))
    reference = configs[arms[0].config]
    device = dict(zip(args.opts[::2], args.opts[1::2])).get("MODEL.DEVICE", "cpu")

    def schedule(arm):
        solver = configs[arm.config].SOLVER  # each pair's own schedule
        total = (args.iters or (QUICK_ITERS if args.quick else solver.MAX_ITER)) * arm.iters_factor
        opts = schedule_overrides(solver.MAX_ITER, solver.STEPS, solver.WARMUP_ITERS, total)
        opts += ["TEST.EVAL_PERIOD", str(total // arm.eval_points if arm.eval_points > 1 else 0)]
        if args.quick:  # the tiny splits, for this pair's task
            opts += tiny_splits(PAIRS[arm.pair].task_suffix)
        return opts

    output_dir = Path(args.output_dir).resolve()
    for cfg in configs.values():
        for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
            ensure_generated(name)
    results = arm_runs(arms, args.seeds, output_dir, base_opts, schedule)
    say(f"{len(arms)} arms x {len(args.seeds)} seeds, {args.jobs} at a time, {args.threads} thread(s) each")
    if args.report_only:  # is_done() reads each finished run's metrics
        results = [(arm, run) for arm, run in results if run.is_done()]
        arms = [arm for arm in arms if any(a is arm for a, _ in results)]
        if not results:
            parser.error(f"--report-only: no finished run in {output_dir}")
    else:
        longest_first = sorted(results, key=lambda pair: -pair[0].iters_factor)  # stable: else as listed
        run_all([run for _, run in longest_first], args.jobs, args.threads, say)

    costs = {}
    for arm in arms:
        cfg = load_config(str(ROOT / arm.config), base_opts + arm.opts() + schedule(arm) + on_cpu)
        costs[arm.key] = measure_cost(cfg)
    rows = summarize_arms(results, costs)
    speed = fusion_speed() if not args.quick else {}
    length = f"{args.iters} iterations" if args.iters else "each pair's schedule"
    title = (
        f"Neck study: R{reference.MODEL.RESNETS.DEPTH} from scratch on {reference.DATASETS.TRAIN[0]}, "
        f"{length}, seeds {', '.join(map(str, args.seeds))}, trained on {device}"
    )
    report(rows, results, speed, output_dir, title)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"neck_study.py: error: {e}", file=sys.stderr)
        sys.exit(2)
