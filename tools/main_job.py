#!/usr/bin/env python
"""The main job: the built-in RetinaNet (ResNet-18 from scratch, 320 px, batch 4, 300
iterations) with Detectron2's FPN and with its BiFPN switch, two seeds each, on the
built-in synthetic dataset, on CPU; evaluated on the reporting split (``synthetic_shapes_val``)
and the two transfer sets that no choice looked at. One call of ``tools/compare_necks.py``:

    python tools/main_job.py                 # 4 trainings, two at a time on 2 cores
    python tools/main_job.py --quick         # a smoke run of a few seconds (tiny dataset)
    python tools/main_job.py --seeds 0 1 2 --iters 600 --output-dir output/longer

How long it takes depends on the machine: 2-core machines differ by up to 3x (0.95 to
2.98 s/iter for the same job); the progress lines show each run's ETA. The output directory
(default ``output/main_job``) receives ``results.md`` / ``.csv`` / ``.png`` and each run's
``tools/train_net.py`` output (see ``tools/compare_necks.py``).
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks.comparison import comparison_parser, run_comparison

CONFIG = "configs/synthetic/RetinaNet-R18-FPN.yaml"
# The reporting split and the transfer sets: never the dev split, where choices are made.
TEST_SETS = "('synthetic_shapes_val','synthetic_shapes_transfer_large','synthetic_shapes_transfer_small')"


def say(message: str) -> None:
    print(f"[main_job] {message}", flush=True)


def main(argv=None) -> list:
    args = comparison_parser(__doc__, "output/main_job", CONFIG).parse_args(argv)
    if not args.quick:
        args.opts = ["DATASETS.TEST", TEST_SETS] + args.opts
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        say(f"note: the machine is busy (load average {load:.1f} on {os.cpu_count()} cores); "
            "timings assume an idle machine")
    start = time.perf_counter()
    rows = run_comparison(args, "main_job.py", say)
    minutes = (time.perf_counter() - start) / 60
    say(f"done in {minutes:.1f} min; wrote {Path(args.output_dir) / 'results.md'}, results.csv, results.png")
    return rows


if __name__ == "__main__":
    main()
