#!/usr/bin/env python
"""Run a model on images and write them with its predictions drawn (Detectron2's demo).

Same command line as Detectron2's ``demo/demo.py`` (images only; no webcam or video), but
reading bifpn_d2 configs: boxes, class names and scores (masks for Mask R-CNN, segments for
semantic segmentation) drawn by Detectron2's ``Visualizer``, class names from the metadata
of the config's first test dataset. Needs OpenCV (``pip install opencv-python-headless``)::

    python tools/demo.py --config-file configs/synthetic/RetinaNet-R18-BiFPN.yaml \\
        --input "datasets/val/*.jpg" --output predictions/ \\
        --opts MODEL.WEIGHTS output/synthetic/RetinaNet-R18-BiFPN/model_final.pth

``--input`` takes files or glob patterns (quoted); ``--output`` is a file for one input, or
a folder (created; existing, ending with ``/``, or with several inputs) receiving each
picture under its input's file name. Without ``MODEL.WEIGHTS`` the model has random weights.
``--config-file`` also takes the name of a shipped config (``synthetic/RetinaNet-R18-BiFPN.yaml``).
"""

import argparse
import sys
from typing import List, Optional, Sequence

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
from detectron2.utils.logger import setup_logger

from bifpn_d2.engine import exit_on_config_error, load_config, script_parser
from bifpn_d2.engine.visualize import expand_inputs, run_demo, set_confidence_threshold


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__, opts="--opts")
    parser.add_argument("--input", nargs="+", required=True, help="image files, globs ('dir/*.jpg')")
    parser.add_argument("--output", required=True, help="output file (one input) or folder")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score for instance predictions to be shown")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Parse ``argv`` (default: the command line), predict, draw; returns the files written."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="bifpn_d2")
    cfg = load_config(args.config_file, args.opts)
    set_confidence_threshold(cfg, args.confidence_threshold)
    cfg.freeze()
    return run_demo(cfg, expand_inputs(args.input), args.output)


if __name__ == "__main__":
    exit_on_config_error(lambda: main(sys.argv[1:]))
