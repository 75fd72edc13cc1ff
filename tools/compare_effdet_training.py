#!/usr/bin/env python
"""Train the same EfficientDet-D0 twice, with effdet's own training pieces (DetBenchTrain,
its anchor labeler and losses, timm's EMA and clipping, in a plain loop) and with our
``tools/train_net.py`` and ``configs/EfficientDet/EfficientDet-D0.yaml``: the same initial
weights (effdet's initialisation, converted), the same images in the same order with the
same augmentation, the same schedule; both evaluated by Detectron2's COCO evaluator on
``synthetic_shapes_val``. The logic and what is equal by construction:
``benchmarks/effdet_training.py``.

    python tools/compare_effdet_training.py                      # seeds 0 1, 300 iterations
    python tools/compare_effdet_training.py --seeds 0 1 2 --iters 600 --output-dir output/longer
    python tools/compare_effdet_training.py --quick              # a smoke run (tiny dataset)

Writes ``results.md`` / ``.csv`` (AP of each side: mean, spread, every seed) and
``results.png`` (the training curves of all runs) to ``--output-dir``
(``output/effdet_training``), and each run's Detectron2 output directory beneath it. On a
2-core CPU each run takes about 10-30 minutes (two side by side); progress lines show the
iterations and ETA of each run.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/

from benchmarks.comparison import QUICK_ITERS
from benchmarks.effdet_training import compare_trainings
from bifpn_d2.data import TINY_OVERRIDES


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds per side (default: 0 1)")
    parser.add_argument("--iters", type=int, default=300, help="training iterations (default: 300)")
    parser.add_argument("--output-dir", default="output/effdet_training")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run (default: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: the tiny dataset, 128 px, 2 iterations")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of both sides")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.jobs < 1 or args.threads < 1:
        parser.error("--iters, --jobs and --threads must be >= 1")
    try:
        import effdet  # noqa: F401
    except ImportError:
        parser.error("effdet is not installed: pip install effdet (tools/setup_env.sh installs it)")
    opts = list(args.opts)
    if args.quick:
        opts = TINY_OVERRIDES + opts
        args.iters = QUICK_ITERS
    return compare_trainings(args.seeds, args.iters, Path(args.output_dir), args.jobs, args.threads, opts)


if __name__ == "__main__":
    main()
