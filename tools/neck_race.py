#!/usr/bin/env python
"""Race our necks against their references, neck alone, in one process.

Cases (``--cases``):

- ``bifpn-d0``: our BiFPN vs effdet's ``efficientdet_d0`` BiFPN (64 ch, 3 cells) at
  ``--d0-size`` (512);
- ``bifpn-d3``: the same for ``efficientdet_d3`` (160 ch, 6 cells) at ``--d3-size`` (896);
- ``fpn-r50``: our :class:`WeightedFPN` vs Detectron2's ``FPN`` over ResNet-50, P2-P6,
  at ``--fpn-sizes`` (800x800 and 800x1333, Detectron2's test size, whose 1333 is not a
  multiple of 32: Detectron2's FPN fails on it, so it is given the input padded to
  800x1344 as its ``ImageList`` would, and the row says so).

For each case, size and batch size: the reference's bottom-up network (random weights)
computes features once; the reference neck and ours (built on
:class:`PrecomputedFeatures`, holding the reference's weights: effdet's via
``convert_effdet_state_dict``, Detectron2's under the same names) get those same
tensors. Before timing, BN statistics and fusion weights of the reference are
randomised (so equality is not trivial) and the largest output difference is printed.
Then, with the same threads:

- inference (eval, ``no_grad``): reference, ours, ours folded (``fold_for_inference``),
  interleaved round by round; medians;
- training step (train mode, forward + backward of the sum of the outputs): reference
  and ours, interleaved; medians;
- peak memory of one training step and one inference, same method for both (see
  :data:`MEMORY_METHODS`).

Ratios are ours / reference (< 1: ours is faster or smaller), next to the targets. The
races themselves are :mod:`benchmarks.race`; this script runs them and writes
``race.csv``, ``race.md`` and ``race.png`` to ``--output-dir``.

Example::

    python tools/neck_race.py --cases bifpn-d0 bifpn-d3 --batch-sizes 1 8 --repeats 7 --threads 1

On a shared machine, use fewer threads than there are free cores: an OpenMP thread that
waits for a core held by another process stalls every parallel op of both contestants.
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from benchmarks import (
    CASES,
    MEMORY_METHODS,
    check_device,
    markdown_table,
    parse_size,
    plot_bars,
    race,
    race_name,
    target_rows,
    write_csv,
    write_text,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--d0-size", type=int, default=512, help="square input side for bifpn-d0")
    parser.add_argument("--d3-size", type=int, default=896, help="square input side for bifpn-d3")
    parser.add_argument("--fpn-sizes", nargs="+", default=["800x800", "800x1333"], help="HxW for fpn-r50")
    parser.add_argument("--repeats", type=int, default=7, help="measured rounds (medians over these)")
    parser.add_argument("--warmup", type=int, default=2, help="discarded rounds before measuring")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-train", action="store_true", help="skip training-step times and memory")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    parser.add_argument(
        "--reference-channels-last",
        action="store_true",
        help="also time the reference's inference on channels-last copies of its inputs (informative: "
        "ours converts on CPU by itself; the targets compare with the reference as shipped)",
    )
    parser.add_argument("--output-dir", default="output/neck_race")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    return args


def races(args: argparse.Namespace) -> List[Tuple[str, List[int], int]]:
    """(case, size, batch) of every race requested."""
    out = []
    for case in args.cases:
        if case == "fpn-r50":
            sizes = [parse_size(s) for s in args.fpn_sizes]
        else:
            sizes = [[args.d0_size] * 2 if case == "bifpn-d0" else [args.d3_size] * 2]
        out += [(case, size, batch) for size in sizes for batch in args.batch_sizes]
    return out


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run the races given on the command line; returns the result rows."""
    args = parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"{args.warmup} warmup + {args.repeats} measured rounds, interleaved; memory: "
        f"{MEMORY_METHODS[device.type]}",
        flush=True,
    )
    rows = []
    for case, size, batch in races(args):
        print(f"\n== {race_name(case, size, batch)}", flush=True)
        row = race(
            case,
            size,
            batch,
            device,
            args.repeats,
            args.warmup,
            train=not args.no_train,
            memory=not args.no_memory,
            reference_channels_last=args.reference_channels_last,
        )
        rows.append(row)
        print(markdown_table([row], [k for k in row if k not in ("race", "case", "reference")]), end="")
        print(f"reference: {row['reference']}", flush=True)

    columns = [
        "race",
        "ref_params",
        "our_params",
        "max_diff",
        "folded_max_diff",
        "ref_infer_ms",
        "our_infer_ms",
        "folded_infer_ms",
        "infer_ratio",
        "folded_ratio",
        "ref_train_ms",
        "our_train_ms",
        "train_ratio",
        "ref_infer_mem_MB",
        "our_infer_mem_MB",
        "ref_train_mem_MB",
        "our_train_mem_MB",
        "train_mem_ratio",
    ]
    if args.reference_channels_last:
        columns += ["ref_cl_infer_ms", "infer_ratio_vs_ref_cl", "folded_ratio_vs_ref_cl"]
    targets = target_rows(rows)
    text = (
        f"# Neck race ({device}, {args.threads} threads, medians of {args.repeats} interleaved runs)\n\n"
        + markdown_table(rows, columns)
        + "\nReferences: "
        + "; ".join(f"{r['race']}: {r['reference']}" for r in rows)
        + f"\n\nPeak memory: {MEMORY_METHODS[device.type]}.\n\n## Targets (ours / reference)\n\n"
        + markdown_table(targets)
    )
    print("\n" + text)
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv(rows, os.path.join(args.output_dir, "race.csv"))
    write_text(text, os.path.join(args.output_dir, "race.md"))
    ratio_names = ["infer_ratio", "folded_ratio", "train_ratio", "train_mem_ratio"]
    plot_bars(
        [r["race"] for r in rows],
        {name: [r.get(name, float("nan")) for r in rows] for name in ratio_names},
        "ours / reference (lower is better)",
        os.path.join(args.output_dir, "race.png"),
        title=f"Neck race, {device}, {args.threads} threads",
        reference_lines={"parity (1.0)": 1.0},
    )
    print(f"wrote race.csv, race.md, race.png to {args.output_dir}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
