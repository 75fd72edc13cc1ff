#!/usr/bin/env python
"""Convert pretrained weights into files that bifpn_d2 models load.

Two conversions::

    # (a) an ImageNet EfficientNet (timm or torchvision names) for our EfficientNet
    #     bottom-up: --to backbone gives a file for MODEL.EFFICIENTNET.WEIGHTS, --to
    #     detectron2 a Detectron2 checkpoint (keys backbone.bottom_up.body.*) for
    #     MODEL.WEIGHTS of a detector with an EfficientNet + BiFPN/FPN backbone.
    python tools/convert_weights.py efficientnet b0.pth out.pth --model efficientnet_b0 --to backbone

    # (b) an effdet EfficientDet checkpoint for the detector of a config (for MODEL.WEIGHTS);
    #     the config must describe the same network (EfficientNet size, BiFPN width, cells,
    #     levels, head repeats, TF padding and biases for tf_ models). With META_ARCHITECTURE
    #     "EfficientDet" the whole model is converted (--coco-80: keep the 80 COCO classes of
    #     Detectron2 out of effdet's 90); with another detector (RetinaNet, Faster R-CNN)
    #     only its BiFPN backbone (keys backbone.*).
    python tools/convert_weights.py effdet --config-file cfg.yaml effdet_d0.pth out.pth [KEY VALUE ...]

Each conversion prints the missing keys (the target model has them, the file does not)
and the unexpected keys (in the file, not in the target); a shape mismatch is an error.
How names are mapped: :mod:`bifpn_d2.convert`.
"""
import argparse
import sys
from typing import List, Optional

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
from detectron2.utils.logger import setup_logger

from bifpn_d2.convert import Report, convert_effdet_file, convert_efficientnet_file
from bifpn_d2.engine import ConfigError


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    eff = commands.add_parser("efficientnet", help="timm/torchvision ImageNet EfficientNet weights")
    eff.add_argument("source", help="classification checkpoint (.pth/.pt/.safetensors)")
    eff.add_argument("output", help="file to write")
    eff.add_argument("--model", default="efficientnet_b0", help="timm name of the EfficientNet")
    eff.add_argument("--to", choices=["backbone", "detectron2"], default="backbone",
                     help="backbone: for MODEL.EFFICIENTNET.WEIGHTS; detectron2: for MODEL.WEIGHTS")
    det = commands.add_parser("effdet", help="effdet EfficientDet weights for a BiFPN detector")
    det.add_argument("source", help="effdet checkpoint")
    det.add_argument("output", help="Detectron2 checkpoint to write (for MODEL.WEIGHTS)")
    det.add_argument("--config-file", required=True, help="config of the BiFPN detector")
    det.add_argument("--coco-80", action="store_true",
                     help="the checkpoint has effdet's 90 COCO classes: keep Detectron2's 80")
    det.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs (last)")
    return parser


def main(argv: Optional[List[str]] = None) -> Report:
    """Run the command line ``argv``; return the report of missing and unexpected keys."""
    args = get_parser().parse_args(argv)
    setup_logger(name="bifpn_d2")
    if args.command == "efficientnet":
        return convert_efficientnet_file(args.source, args.output, args.model, args.to)
    return convert_effdet_file(args.source, args.output, args.config_file, args.opts, args.coco_80)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, OSError, ValueError) as e:
        print(f"convert_weights.py: error: {e}", file=sys.stderr)
        sys.exit(2)
