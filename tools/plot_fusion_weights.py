#!/usr/bin/env python
"""Plot the normalised fusion weights of every BiFPN node: which inputs each node uses.

Builds the model of ``--config-file`` (plus ``KEY VALUE`` overrides), loads ``--weights``
(a checkpoint written by training; without it the freshly built model is shown, whose
weights are all equal) and draws one panel per BiFPN cell: for each fused node a group of
bars, one per input edge, labelled by the source (``P4 in``: the cell's input at P4,
``P5 td``: the top-down node at P5, ``P4 out``: the cell's output at P4). Bar heights are
:meth:`WeightedFusion.normalized_weights` (for ``fast_normalized`` and ``softmax`` they
sum to about 1 per node). A :class:`WeightedFPN` with learnable fusion gets one panel for
its top-down path. The reading and the figure are :mod:`benchmarks.fusion_panels`.

Writes ``fusion_weights.png`` and ``fusion_weights.csv`` (one row per edge) to
``--output-dir``.

Example::

    python tools/plot_fusion_weights.py --config-file configs/EfficientDet/EfficientDet-D0.yaml \\
        --weights output/d0/model_final.pth
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import collect_panels, edge_rows, plot_panels, write_csv
from bifpn_d2.engine.config import load_config


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default="", help="checkpoint to load (default: the freshly built model)")
    parser.add_argument("--output-dir", default="output/fusion_weights")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def shown_path(path: str) -> str:
    """``path`` as the figure's title gives it: relative to the working directory when it
    lies below it, else its last three parts (a picture names no machine's folders)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*resolved.parts[-3:]))


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Plot the fusion weights of the model on the command line; returns the CSV rows."""
    args = parse_args(argv)
    cfg = load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    if args.weights:
        DetectionCheckpointer(model).load(args.weights)
        source = shown_path(args.weights)
    else:
        source = "freshly built, untrained (all weights equal)"
    with torch.no_grad():
        panels = collect_panels(model)
    rows = edge_rows(panels)
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    png = plot_panels(
        panels,
        os.path.join(args.output_dir, "fusion_weights.png"),
        f"Normalised fusion weights: {name}\n{source}",
    )
    write_csv(rows, os.path.join(args.output_dir, "fusion_weights.csv"))
    print(f"wrote {png} and fusion_weights.csv ({len(rows)} edges)")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
