#!/usr/bin/env python
"""A model-zoo-style table: our configs next to Detectron2's own R50-FPN detectors.

Rows:

- Detectron2's RetinaNet R50-FPN and Faster R-CNN R50-FPN, built from the config files
  that detectron2 ships (``detectron2.model_zoo.get_config_file``), with the model zoo's
  published numbers (8 V100s, batch 16) as reference columns: box AP of the 1x and 3x
  schedules, training s/iter, inference s/image, training memory;
- every config given (default: ``configs/**/*.yaml`` except ``Base-*`` files), with the
  EfficientDet paper's AP, parameters and FLOPs as reference columns for the
  ``EfficientDet-D<n>`` configs (their heads differ from EfficientDet's; see the configs).

Measured here, for every row: parameters, GFLOPs of one image at the config's test size
(``MIN_SIZE_TEST`` x ``MAX_SIZE_TEST``, e.g. 800x1333; ``--size`` overrides it for every
row; fvcore, one per multiply-add) and inference latency (eval, ``no_grad``, batch 1,
median of ``--repeats``; all models are built first, then timed interleaved round by
round, so that the machine's load affects them alike). ``your_AP`` is the last
``bbox/AP`` in a ``metrics.json`` found under ``--results-root`` (in ``<root>/<config path
under configs/ without .yaml>``, ``<root>/<config name>``) or in the config's own
``OUTPUT_DIR``, or given with ``--result NAME=DIR``.

Writes ``model_zoo.csv``, ``model_zoo.md`` and ``ap_vs_gflops.png`` (AP against GFLOPs,
as EfficientDet's Figure 1) to ``--output-dir``. The rows are built by
:mod:`benchmarks.zoo`.

Example::

    python tools/model_zoo_table.py --size 512 --repeats 3
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import (
    ZOO_COLUMNS,
    config_rows,
    default_configs,
    detectron2_rows,
    markdown_table,
    plot_ap_vs_gflops,
    time_models,
    write_csv,
    write_text,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=None, help="default: configs/**/*.yaml except Base-*")
    parser.add_argument(
        "--size", default=None, help="N or HxW for every row (default: each config's test size)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model (0: no latency)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-detectron2", action="store_true", help="leave out Detectron2's reference rows")
    parser.add_argument("--results-root", default="output", help="where training runs' OUTPUT_DIRs live")
    parser.add_argument(
        "--result",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="the OUTPUT_DIR of config NAME (file name without .yaml)",
    )
    parser.add_argument("--output-dir", default="output/model_zoo")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Build the table described by the command line; returns its rows."""
    args = parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runners: Dict[str, Callable[[], None]] = {}
    rows = [] if args.no_detectron2 else detectron2_rows(args.size, device, runners)
    configs = default_configs() if args.configs is None else args.configs
    explicit = dict(item.split("=", 1) for item in args.result)
    rows += config_rows(configs, args.size, args.results_root, explicit, device, runners)
    if args.repeats > 0 and runners:
        print(f"timing {len(runners)} models, interleaved ...", flush=True)
        start = time.perf_counter()

        def progress(done: int, total: int) -> None:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (total - done)
            print(f"  round {done}/{total} ({args.warmup} warmup), eta {eta / 60:.1f} min", flush=True)

        time_models(rows, runners, args.repeats, args.warmup, device, on_round=progress)
    text = (
        f"# Model zoo comparison\n\nMeasured here: {device}, {args.threads} threads, torch "
        f"{torch.__version__}; latency = median of {args.repeats} interleaved runs at batch 1 after "
        f"{args.warmup} warmup; GFLOPs by fvcore (multiply-adds) at `input`. `ref_*` columns are "
        "published numbers: Detectron2 model zoo (8 V100, batch 16; AP of the 1x and 3x schedules) "
        "and the EfficientDet paper (AP, params, GFLOPs at its own input size). `your_AP`: the last "
        "bbox/AP in the training run's metrics.json, when found.\n\n" + markdown_table(rows, ZOO_COLUMNS)
    )
    print("\n" + text)
    write_csv(rows, os.path.join(args.output_dir, "model_zoo.csv"), ZOO_COLUMNS)
    write_text(text, os.path.join(args.output_dir, "model_zoo.md"))
    plot_ap_vs_gflops(rows, os.path.join(args.output_dir, "ap_vs_gflops.png"))
    print(f"wrote model_zoo.csv, model_zoo.md, ap_vs_gflops.png to {args.output_dir}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
