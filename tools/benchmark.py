#!/usr/bin/env python
"""Benchmark one model or backbone: parameters, FLOPs, latency, training step, memory.

The subject is a config file (Detectron2 YAML, read after ``add_bifpn_config``), or a
registered backbone name on Detectron2's defaults, plus ``KEY VALUE`` overrides. For each
device, input size and batch size it measures:

- parameters, and GFLOPs of one image at that size (fvcore, one per multiply-add);
- inference latency (eval, ``no_grad``) of the subject and of its
  ``fold_for_inference`` copy, interleaved;
- training-step time (train mode, forward + backward of the summed losses for a model,
  of the summed outputs for a backbone; random images with three boxes each);
- peak memory of one inference and one training step (CPU: PyTorch profiler allocation
  trace; CUDA: ``max_memory_allocated``; see ``benchmarks.MEMORY_METHODS``).

Times are medians of ``--repeats`` runs after ``--warmup`` runs (the measurements are
:mod:`benchmarks.sweep`). Writes
``benchmark.csv``, ``benchmark.md`` and ``benchmark.png`` to ``--output-dir``.

Examples::

    python tools/benchmark.py --config-file configs/RetinaNet-R50-BiFPN.yaml \\
        --sizes 512 800x1333 --batch-sizes 1 2 --output-dir output/bench
    python tools/benchmark.py --backbone build_retinanet_efficientnet_bifpn_backbone \\
        MODEL.FPN.IN_FEATURES "['c3', 'c4', 'c5']" MODEL.BIFPN.OUT_CHANNELS 64 MODEL.BIFPN.NUM_CELLS 3
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import (
    COMPONENTS,
    MEMORY_METHODS,
    benchmark_device,
    describe,
    markdown_table,
    parse_size,
    plot_sweep,
    subject_config,
    write_csv,
    write_text,
)
from bifpn_d2.engine import ConfigError

COLUMNS = [
    "name",
    "device",
    "threads",
    "size",
    "batch",
    "params_M",
    "gflops",
    "infer_ms",
    "folded_infer_ms",
    "infer_ms_per_image",
    "train_ms",
    "infer_mem_MB",
    "train_mem_MB",
    "runs",
    "note",
]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="Detectron2 YAML config")
    parser.add_argument("--backbone", default="", help="registered backbone builder (MODEL.BACKBONE.NAME)")
    parser.add_argument(
        "--component",
        choices=COMPONENTS,
        default=None,
        help="whole model or backbone only (default: model with a config file, else backbone)",
    )
    parser.add_argument("--sizes", nargs="+", default=["512"], help="input sizes, N or HxW")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--no-train", action="store_true", help="skip training-step time and memory")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--output-dir", default="output/benchmark")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if not args.config_file and not args.backbone:
        parser.error("give --config-file and/or --backbone")
    if args.component is None:
        args.component = "model" if args.config_file else "backbone"
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run the benchmark described by the command line; returns the result rows."""
    args = parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        cfg = subject_config(args.config_file, args.opts, args.backbone)
    except ConfigError as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    name = describe(cfg, args.config_file)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for device in devices:
        rows += benchmark_device(
            cfg,
            args.component,
            torch.device(device),
            name,
            args.sizes,
            args.batch_sizes,
            args.repeats,
            args.warmup,
            train=not args.no_train,
            memory=not args.no_memory,
            flops=not args.no_flops,
        )

    methods = "; ".join(f"{d}: {MEMORY_METHODS[torch.device(d).type]}" for d in devices)
    text = (
        f"# Benchmark of {name} ({args.component})\n\n"
        f"torch {torch.__version__}, {args.threads} threads; medians of {args.repeats} runs after "
        f"{args.warmup} warmup; GFLOPs per image (fvcore, multiply-adds); folded = fold_for_inference.\n"
        f"Peak memory ({methods}).\n\n" + markdown_table(rows, COLUMNS)
    )
    print("\n" + text)
    write_csv(rows, os.path.join(args.output_dir, "benchmark.csv"), COLUMNS)
    write_text(text, os.path.join(args.output_dir, "benchmark.md"))
    sizes = ["{}x{}".format(*parse_size(s)) for s in args.sizes]
    plot_sweep(rows, os.path.join(args.output_dir, "benchmark.png"), f"{name} ({args.component})", sizes)
    print(f"wrote benchmark.csv, benchmark.md, benchmark.png to {args.output_dir}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
