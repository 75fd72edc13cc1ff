#!/usr/bin/env python
"""Our EfficientDet against effdet's, in one process (see benchmarks.efficientdet_race).

    # parameters and FLOPs of D0-D7x, ours vs effdet's tf_efficientdet_* vs the paper
    python tools/efficientdet_race.py size --output-dir output/efficientdet_size

    # speed: inference and training step, D0 (512) and D3 (896), batch 1 and 8, 1 and 2 threads
    python tools/efficientdet_race.py race --variants D0 D3 --batch-sizes 1 8 --threads 1 2 \\
        --repeats 5 --warmup 2 --output-dir output/efficientdet_race
    # and compiled (torch.compile, inductor) inference, ours and effdet's
    python tools/efficientdet_race.py race --variants D0 --batch-sizes 1 8 --threads 1 --compiled \
        --output-dir output/efficientdet_race_compiled
    # on a GPU, fp32 and mixed precision
    python tools/efficientdet_race.py race --device cuda --precisions fp32 amp --repeats 20 \
        --warmup 5 --output-dir output/efficientdet_race_cuda

Writes ``<command>.csv`` and ``<command>.md`` to ``--output-dir`` and prints the table.
Run the race on an otherwise idle machine, with no more threads than free cores.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import check_device, format_value, markdown_table, parse_size, write_csv, write_text
from benchmarks.efficientdet_race import LITE_VARIANTS, PRECISIONS, VARIANTS, race_rows, size_rows


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    size = commands.add_parser("size", help="parameters and FLOPs, ours vs effdet vs the paper")
    size.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + LITE_VARIANTS)
    size.add_argument("--no-flops", action="store_true", help="parameters only (fast)")
    race = commands.add_parser("race", help="inference and training-step times, ours vs effdet")
    race.add_argument("--variants", nargs="+", default=["D0", "D3"], choices=VARIANTS[:4],
                      help="effdet has PyTorch-padding models (our configs' flavour) up to D3")
    race.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    race.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    race.add_argument("--repeats", type=int, default=5)
    race.add_argument("--warmup", type=int, default=2)
    race.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    race.add_argument("--precisions", nargs="+", default=["fp32"], choices=PRECISIONS,
                      help="amp: float16 autocast, on --device cuda")
    race.add_argument("--compiled", action="store_true",
                      help="also race torch.compile'd inference (inductor), ours and effdet's")
    race.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                      help="torch.compile's mode for --compiled (reduce-overhead: CUDA graphs on a GPU)")
    race.add_argument("--size", type=parse_size, default=None,
                      help="input size N or HxW for every variant (default: each config's)")
    for command in (size, race):
        command.add_argument("--config-root", default="configs")
        command.add_argument("--output-dir", default="output/efficientdet_race")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.command == "race":
        check_device(parser, args.device)

    def show(row: Dict[str, Any]) -> None:
        print(", ".join(f"{k}={format_value(v, 4)}" for k, v in row.items()), flush=True)

    if args.command == "size":
        rows = size_rows(args.variants, args.config_root, flops=not args.no_flops, on_row=show)
    else:
        sizes = {v: args.size for v in args.variants} if args.size else None
        rows = race_rows(args.variants, args.batch_sizes, args.threads, args.repeats, args.warmup, sizes,
                         args.config_root, on_row=show, device=args.device, precisions=args.precisions,
                         compiled=args.compiled, compile_mode=args.compile_mode)
    table = markdown_table(rows, digits=4)
    write_csv(rows, os.path.join(args.output_dir, f"{args.command}.csv"))
    write_text(table, os.path.join(args.output_dir, f"{args.command}.md"))
    print(table)
    return rows


if __name__ == "__main__":
    main()
