#!/usr/bin/env python
"""Does the BiFPN help on *your* data? Train a Detectron2 config with an FPN and its BiFPN
switch side by side, over several seeds, and compare them in one table.

    python tools/compare_necks.py --config-file my_retinanet_fpn.yaml \\
        DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)"
    python tools/compare_necks.py --config-file synthetic/FasterRCNN-R18-FPN.yaml --seeds 0 1 2
    python tools/compare_necks.py --config-file synthetic/RetinaNet-R18-FPN.yaml --quick

The config is any YAML config whose backbone is an FPN (Detectron2's model zoo, ours, your
own; register your datasets first, e.g. in a ``sitecustomize`` or a module imported by
``train_net``). Its BiFPN switch is the same config with ``MODEL.BACKBONE.NAME`` changed to
the BiFPN builder of the same bottom-up network, nothing else: the ``MODEL.BIFPN``
defaults, which are the neck study's recipe (docs/neck_study.md). Each model and seed is
trained and evaluated on ``DATASETS.TEST`` by ``tools/train_net.py`` in a subprocess whose
progress (iteration, losses, ETA) is shown as it runs; by default one single-thread run per
core goes at a time. The output directory receives ``results.md`` / ``.csv`` (one row per
neck: the judged metric, box or mask AP, mIoU or PQ, as mean, sd and every seed, its
difference to the FPN on every test dataset, parameters, GFLOPs, seconds per iteration),
``results.png`` (training losses and the metrics, seeds as dots) and each run's Detectron2
output directory. A run finished before with the same recipe is reused; ``--overwrite``
trains it again. A config without an FPN, a dataset that is not registered or a value a
model builder refuses ends the program with one line, before anything trains.

A detector trained for a few hundred iterations moves by about 3 AP between seeds and
machines: compare the means of two seeds or more, never one run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks.comparison import comparison_parser, run_comparison


def main(argv=None) -> list:
    args = comparison_parser(__doc__, "output/compare_necks").parse_args(argv)
    return run_comparison(args, "compare_necks.py", lambda text: print(f"[compare_necks] {text}", flush=True))


if __name__ == "__main__":
    main()
