#!/usr/bin/env python
"""Draw the ground truth of the training datasets of a config (Detectron2's
``tools/visualize_data.py``), from the annotations or after the data loader's augmentation.

::

    python tools/visualize_data.py --config-file configs/synthetic/RetinaNet-R18-BiFPN.yaml \\
        --source annotation --output-dir output/synthetic_shapes --num-images 8 --mosaic shapes.jpg

``--source annotation`` draws the dataset's records on the original images;
``--source dataloader`` what training sees (resized, flipped; ``DATALOADER.NUM_WORKERS``
workers). One picture per image goes to ``--output-dir``; ``--mosaic FILE`` also writes them
side by side in one picture, ``--columns`` wide. Needs OpenCV (``pip install opencv-python-headless``).
``--config-file`` also takes the name of a shipped config.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
from detectron2.utils.logger import setup_logger

from bifpn_d2.engine import exit_on_config_error, load_config, script_parser
from bifpn_d2.engine.visualize import SOURCES, dataset_pictures, mosaic, save_image

logger = logging.getLogger("bifpn_d2.visualize_data")


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument("--source", choices=SOURCES, required=True,
                        help="visualize the annotations or the data loader (with pre-processing)")
    parser.add_argument("--output-dir", required=True, help="folder for the pictures")
    parser.add_argument("--num-images", type=int, default=16, help="how many images to draw (default: 16)")
    parser.add_argument("--mosaic", default="", metavar="FILE", help="also write all of them in one picture")
    parser.add_argument("--columns", type=int, default=4, help="pictures per row of the mosaic")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Parse ``argv`` (default: the command line), draw; returns the files written."""
    args = get_parser().parse_args(argv)
    setup_logger(name="bifpn_d2")
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    written, pictures = [], []
    for name, picture in dataset_pictures(cfg, args.source, args.num_images):
        written.append(save_image(picture, os.path.join(args.output_dir, name)))
        pictures.append(picture)
    if args.mosaic and pictures:
        written.append(save_image(mosaic(pictures, args.columns), args.mosaic))
    logger.info(f"wrote {', '.join(written)}")
    return written


if __name__ == "__main__":
    exit_on_config_error(lambda: main(sys.argv[1:]))
