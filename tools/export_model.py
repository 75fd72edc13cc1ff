#!/usr/bin/env python
"""Export a detector with a bifpn_d2 backbone to TorchScript or ONNX, then check the export.

Same interface as Detectron2's ``tools/deploy/export_model.py``::

    python tools/export_model.py --config-file configs/X.yaml --format onnx \\
        --export-method tracing --output exported/ MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

``--output`` is a directory; ``model.ts`` or ``model.onnx`` is written into it. The
exported model is then loaded and run once on the sample image (``--sample-image``,
resized as ``DefaultPredictor`` does, or a synthetic image of the test size), and its
outputs are compared with the PyTorch model's; a mismatch is an error.

What the exported model takes and returns is described in :mod:`bifpn_d2.export`: one
``(3, H, W)`` image of any size in, detections in that image's coordinates out (traced
models return flat tensors, whose schema is logged; scripted ones a dict per image).
``--export-method scripting`` supports ``--format torchscript`` only, as in Detectron2.
"""
import argparse
import logging
from typing import List, Optional

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from bifpn_d2.engine import exit_on_config_error, load_config
from bifpn_d2.export import export_and_verify, sample_image

logger = logging.getLogger("bifpn_d2.export_model")


def get_parser() -> argparse.ArgumentParser:
    """The command line of Detectron2's export_model.py (minus Caffe2 and evaluation)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript",
                        help="output format")
    parser.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing",
                        help="how to export the model")
    parser.add_argument("--output", required=True, help="output directory for the exported model")
    parser.add_argument("--sample-image", default=None, help="image to export with and verify on "
                        "(default: a synthetic image)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs")
    return parser


def main(argv: Optional[List[str]] = None) -> str:
    """Parse ``argv`` (default: the command line), export, verify; return the file written."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.export_method == "scripting" and args.format != "torchscript":
        parser.error("--export-method scripting supports --format torchscript only")
    setup_logger()
    setup_logger(name="bifpn_d2")
    logger.info("Command line arguments: %s", args)
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    image = sample_image(cfg, args.sample_image)
    return export_and_verify(model, image, args.format, args.export_method, args.output)


if __name__ == "__main__":
    exit_on_config_error(main)
