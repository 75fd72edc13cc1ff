#!/usr/bin/env python
"""Where an EfficientDet's time goes, ours against effdet's, stage by stage (see
benchmarks.profile): batching, bottom-up, neck, class and box nets, post-processing,
rescaling; forward and backward of a training step.

    python tools/profile_model.py --variant D0 --batch-sizes 1 8 --threads 1 --repeats 5 \\
        --output-dir output/profile

Writes ``profile.csv`` and ``profile.md`` to ``--output-dir`` and prints the table. On the CPU
(``--threads``) or a GPU (``--device cuda``); run it on an otherwise idle machine.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import check_device, markdown_table, parse_size, write_csv, write_text
from benchmarks.profile import profile_rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="D0", choices=["D0", "D1", "D2", "D3"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=parse_size, default=None, help="input HxW (default: the variant's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config-root", default="configs")
    parser.add_argument("--output-dir", default="output/profile")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if min(args.batch_sizes + [args.threads, args.repeats]) < 1 or args.warmup < 0:
        parser.error("--batch-sizes, --threads and --repeats must be >= 1, --warmup >= 0")
    rows = profile_rows(args.variant, args.batch_sizes, args.threads, args.repeats, args.warmup,
                        args.config_root, args.size or (), args.device)
    table = markdown_table(rows, digits=4)
    write_csv(rows, os.path.join(args.output_dir, "profile.csv"))
    write_text(table, os.path.join(args.output_dir, "profile.md"))
    print(table)
    return rows


if __name__ == "__main__":
    main()
