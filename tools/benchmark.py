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
  trace; CUDA: ``max_memory_allocated``; see ``bifpn_d2.benchmark.MEMORY_METHODS``).

Times are medians of ``--repeats`` runs after ``--warmup`` runs. Writes
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
from typing import Any, Dict, List, Optional, Sequence

import torch

from bifpn_d2 import fold_for_inference
from bifpn_d2.benchmark import (
    COMPONENTS,
    MEMORY_METHODS,
    build_subject,
    count_flops,
    count_parameters,
    describe,
    interleaved_times,
    load_config,
    make_inputs,
    markdown_table,
    median,
    parse_size,
    peak_memory_bytes,
    plot_lines,
    training_step,
    write_csv,
    write_text,
)

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


def measure(
    subject: torch.nn.Module,
    folded: torch.nn.Module,
    inputs: Any,
    args: argparse.Namespace,
    device: torch.device,
) -> Dict[str, Any]:
    """Latencies, training-step time and peak memories of ``subject`` on ``inputs``."""
    row: Dict[str, Any] = {}

    def infer(module: torch.nn.Module) -> None:
        with torch.no_grad():
            module(inputs)

    subject.eval()
    times = interleaved_times(
        {"subject": lambda: infer(subject), "folded": lambda: infer(folded)},
        args.repeats,
        args.warmup,
        device,
    )
    row["infer_ms"] = 1000 * median(times["subject"])
    row["folded_infer_ms"] = 1000 * median(times["folded"])
    if not args.no_memory:
        row["infer_mem_MB"] = peak_memory_bytes(lambda: infer(subject), device) / 2**20
    if args.no_train:
        return row
    subject.train()
    try:
        step = interleaved_times(
            {"train": lambda: training_step(subject, inputs)}, args.repeats, args.warmup, device
        )
        row["train_ms"] = 1000 * median(step["train"])
        if not args.no_memory:
            subject.zero_grad(set_to_none=True)  # freed before the measured step, not in it
            row["train_mem_MB"] = peak_memory_bytes(lambda: training_step(subject, inputs), device) / 2**20
    except Exception as e:  # e.g. batch norm over a 1x1 map of one image, targets it lacks
        row["note"] = f"training step failed: {str(e).splitlines()[0]}"
        print(row["note"], flush=True)
    subject.eval()
    return row


def benchmark_device(cfg, args: argparse.Namespace, device: torch.device, name: str) -> List[Dict[str, Any]]:
    """Every (size, batch) row for one device."""
    subject = build_subject(cfg, args.component, device).eval()
    params = count_parameters(subject) / 1e6
    folded = fold_for_inference(subject)
    rows = []
    for size_text in args.sizes:
        size = parse_size(size_text)
        gflops = float("nan")
        if not args.no_flops:
            one = make_inputs(args.component, 1, size, device)
            gflops = count_flops(subject, one if args.component == "model" else (one,)) / 1e9
        for batch in args.batch_sizes:
            row: Dict[str, Any] = {
                "name": name,
                "device": device.type,
                "threads": torch.get_num_threads(),
                "size": f"{size[0]}x{size[1]}",
                "batch": batch,
                "params_M": params,
                "gflops": gflops,
                "runs": args.repeats,
            }
            print(f"{name} {device.type} {row['size']} bs{batch} ...", flush=True)
            row.update(
                measure(subject, folded, make_inputs(args.component, batch, size, device), args, device)
            )
            row["infer_ms_per_image"] = row["infer_ms"] / batch
            rows.append(row)
    return rows


def plot(rows: List[Dict[str, Any]], path: str, title: str, sizes: Sequence[str]) -> str:
    """Latency, training-step time and training memory against input size, one line per
    (device, batch size); folded inference dashed alongside."""
    panels = []
    for ylabel, keys in (
        ("inference ms", ("infer_ms", "folded_infer_ms")),
        ("training step ms", ("train_ms",)),
        ("peak training memory MiB", ("train_mem_MB",)),
    ):
        series = {}
        for key in keys:
            for device, batch in dict.fromkeys((r["device"], r["batch"]) for r in rows):
                sel = [r for r in rows if r["device"] == device and r["batch"] == batch and key in r]
                if sel:
                    label = f"{device} bs{batch}" + (" folded" if key.startswith("folded") else "")
                    series[label] = ([r["size"] for r in sel], [r[key] for r in sel])
        panels.append((ylabel, series))
    return plot_lines(panels, "input size (HxW)", path, title, x_order=sizes)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run the benchmark described by the command line; returns the result rows."""
    args = parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts, args.backbone)
    name = describe(cfg, args.config_file)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for device in devices:
        rows += benchmark_device(cfg, args, torch.device(device), name)

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
    plot(rows, os.path.join(args.output_dir, "benchmark.png"), f"{name} ({args.component})", sizes)
    print(f"wrote benchmark.csv, benchmark.md, benchmark.png to {args.output_dir}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
