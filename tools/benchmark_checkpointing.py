#!/usr/bin/env python
"""Activation checkpointing on and off: time and peak memory of one training step of a
model (see benchmarks.checkpointing). Every ``*.CHECKPOINT_ACTIVATIONS`` key the model
reads is set together (EfficientNet stages, BiFPN cells, class/box nets).

    python tools/benchmark_checkpointing.py --config-file configs/EfficientDet/EfficientDet-D0.yaml \\
        --batch-sizes 1 4 --output-dir output/checkpointing
    python tools/benchmark_checkpointing.py --config-file configs/EfficientDet/EfficientDet-D3.yaml \\
        --batch-sizes 8 --variants on --output-name d3_batch8   # too big without it

Writes ``<output-name>.csv`` and ``<output-name>.md`` to ``--output-dir`` and prints the
table. Run it on an otherwise idle machine.
"""
import argparse
import logging
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import (
    MEMORY_METHODS,
    check_device,
    describe,
    markdown_table,
    subject_config,
    write_csv,
    write_text,
)
from benchmarks.checkpointing import CHECKPOINT_KEYS, VARIANTS, checkpointing_rows
from bifpn_d2.engine import ConfigError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="Detectron2 YAML config of a model")
    parser.add_argument("--sizes", nargs="+", default=None,
                        help="input sizes, N or HxW (default: the config's INPUT.MIN_SIZE_TEST, square)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output-dir", default="output/checkpointing")
    parser.add_argument("--output-name", default="checkpointing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if min(args.batch_sizes + [args.threads, args.repeats]) < 1 or args.warmup < 0:
        parser.error("--batch-sizes, --threads and --repeats must be >= 1, --warmup >= 0")
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file}: no such file")
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        cfg = subject_config(args.config_file, args.opts)
    except ConfigError as e:
        parser.error(str(e))
    sizes = args.sizes or [str(cfg.INPUT.MIN_SIZE_TEST)]
    device = torch.device(args.device)
    name = describe(cfg, args.config_file)
    rows = checkpointing_rows(cfg, name, sizes, args.batch_sizes, args.repeats, args.warmup, device,
                              args.variants)
    text = (
        f"# Activation checkpointing: one training step of {name}\n\n"
        f"torch {torch.__version__}, {args.threads} threads, {device.type}; medians of {args.repeats} "
        f"interleaved steps after {args.warmup} warmup (forward + backward of the summed losses, random "
        f"images with three boxes each). on = {', '.join(CHECKPOINT_KEYS)} True. Peak memory: "
        f"{MEMORY_METHODS[device.type]}.\n\n" + markdown_table(rows, digits=3)
    )
    print("\n" + text)
    write_csv(rows, os.path.join(args.output_dir, f"{args.output_name}.csv"))
    write_text(text, os.path.join(args.output_dir, f"{args.output_name}.md"))
    print(f"wrote {args.output_name}.csv and {args.output_name}.md to {args.output_dir}")
    return rows


if __name__ == "__main__":
    main()
