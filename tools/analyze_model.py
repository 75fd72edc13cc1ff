#!/usr/bin/env python
"""Per-module FLOP, activation and parameter tables, and the structure, of a model built
from a bifpn_d2 config (Detectron2's ``tools/analyze_model.py``).

::

    python tools/analyze_model.py --config-file configs/synthetic/RetinaNet-R18-BiFPN.yaml \\
        --tasks flop parameter -n 10 --output output/analysis
    # a dataset that is not on disk (COCO): random images of a given size
    python tools/analyze_model.py --config-file configs/EfficientDet/EfficientDet-D0.yaml \\
        --tasks flop --input-size 512 MODEL.DEVICE cpu

``flop`` and ``activation`` run ``-n`` images of ``DATASETS.TEST[0]`` (resized for testing,
as Detectron2), or random images with ``--input-size N`` / ``HxW``; the tables are of the
first image (fvcore's ``flop_count_table``), the totals a mean over all. ``parameter`` is
fvcore's ``parameter_count_table``, ``structure`` the printed model. Weights:
``MODEL.WEIGHTS`` (random if empty). Reports are printed, and written to
``--output/<task>.txt`` when ``--output`` is given. ``--config-file`` also takes the name of
a shipped config.
"""

import argparse
import logging
import os
import sys
from typing import Dict, Optional, Sequence

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.logger import setup_logger

from bifpn_d2.engine import exit_on_config_error, load_config, script_parser
from bifpn_d2.engine.analysis import TASKS, analysis_inputs, analyze, parse_size
from bifpn_d2.engine.config import build_checked_model

logger = logging.getLogger("bifpn_d2.analyze_model")


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument("--tasks", choices=TASKS, required=True, nargs="+")
    parser.add_argument("-n", "--num-inputs", type=int, default=100,
                        help="number of images for flop and activation (default: 100, as Detectron2)")
    parser.add_argument("--input-size", default=None, help="random images of this size (N or HxW) instead of "
                        "DATASETS.TEST[0]")
    parser.add_argument("--max-depth", type=int, default=3, help="module nesting shown in the tables")
    parser.add_argument("--output", default="", help="folder for <task>.txt (default: print only)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """Parse ``argv`` (default: the command line), analyse; returns ``{task: report}``."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="bifpn_d2")
    cfg = load_config(args.config_file, args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    model = build_checked_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    size = parse_size(args.input_size) if args.input_size else None
    reports = {}
    for task in args.tasks:
        reports[task] = analyze(model, task, analysis_inputs(cfg, args.num_inputs, size), args.max_depth)
        logger.info(f"{task}:\n{reports[task]}")
        if args.output:
            os.makedirs(args.output, exist_ok=True)
            with open(os.path.join(args.output, f"{task}.txt"), "w") as f:
                f.write(reports[task])
    return reports


if __name__ == "__main__":
    exit_on_config_error(lambda: main(sys.argv[1:]))
