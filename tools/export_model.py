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
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from bifpn_d2 import add_bifpn_config
from bifpn_d2.export import (
    assert_instances_close,
    export_onnx,
    export_scripting,
    export_tracing,
    raw_inference,
    run_onnx,
    scripted_instances,
)

logger = logging.getLogger("bifpn_d2.export_model")

# The synthetic sample (height, width) before resizing: a 4:3 photo.
_SYNTHETIC_SIZE = (480, 640)


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


def setup_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    """Detectron2's config plus bifpn_d2's keys, merged with ``config_file`` and ``opts``."""
    cfg = get_cfg()
    add_bifpn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def sample_image(cfg: CfgNode, path: Optional[str]) -> torch.Tensor:
    """A ``(3, H, W)`` float image in ``cfg.INPUT.FORMAT``, resized as ``DefaultPredictor``
    resizes: read from ``path``, or random pixels (fixed seed) when ``path`` is None."""
    if path is None:
        pixels = np.random.default_rng(0).integers(0, 256, size=(*_SYNTHETIC_SIZE, 3), dtype=np.uint8)
    else:
        pixels = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    pixels = resize.get_transform(pixels).apply_image(pixels)
    return torch.as_tensor(np.ascontiguousarray(pixels.astype("float32").transpose(2, 0, 1)))


def export_and_verify(
    model: torch.nn.Module, image: torch.Tensor, fmt: str, method: str, output_dir: str
) -> str:
    """Export ``model`` (eval mode) to ``output_dir``, run the file once on ``image`` and
    compare with the PyTorch outputs. Returns the path written.

    Raises:
        AssertionError: the exported model's outputs differ from the PyTorch model's.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.onnx" if fmt == "onnx" else "model.ts")
    inputs = [{"image": image}]
    with torch.no_grad():
        expected = raw_inference(model, inputs)[0]
        if method == "scripting":
            torch.jit.save(export_scripting(model), path)
            actual = scripted_instances(torch.jit.load(path)(tuple(inputs))[0], expected.image_size)
        elif fmt == "torchscript":
            traced, adapter = export_tracing(model, image)
            torch.jit.save(traced, path)
            actual = adapter.outputs_schema(torch.jit.load(path)(image))
        else:
            onnx_bytes, adapter = export_onnx(model, image)
            with open(path, "wb") as f:
                f.write(onnx_bytes)
            actual = adapter.outputs_schema(tuple(run_onnx(path, image)))
    if method == "tracing":
        logger.info("Inputs schema: %s", adapter.inputs_schema)
        logger.info("Outputs schema: %s", adapter.outputs_schema)
    # onnxruntime's kernels round differently from PyTorch's; boxes are in pixels.
    tolerance = 1e-3 if fmt == "onnx" else 1e-5
    diff = assert_instances_close(expected, actual, rtol=tolerance, atol=tolerance)
    logger.info("Wrote %s; it runs on a %s image and matches PyTorch (%d detections, max abs diff %.3g)",
                path, "x".join(map(str, image.shape[1:])), len(expected), diff)
    return path


def main(argv: Optional[List[str]] = None) -> str:
    """Parse ``argv`` (default: the command line), export, verify; return the file written."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.export_method == "scripting" and args.format != "torchscript":
        parser.error("--export-method scripting supports --format torchscript only")
    setup_logger()
    setup_logger(name="bifpn_d2")
    logger.info("Command line arguments: %s", args)
    cfg = setup_cfg(args.config_file, args.opts)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    image = sample_image(cfg, args.sample_image)
    return export_and_verify(model, image, args.format, args.export_method, args.output)


if __name__ == "__main__":
    main()
