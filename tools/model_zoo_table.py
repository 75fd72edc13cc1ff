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
as EfficientDet's Figure 1) to ``--output-dir``.

Example::

    python tools/model_zoo_table.py --size 512 --repeats 3
"""

import argparse
import glob
import json
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from bifpn_d2.benchmark import (
    build_subject,
    count_flops,
    count_parameters,
    interleaved_times,
    load_config,
    make_inputs,
    markdown_table,
    median,
    parse_size,
    plot_scatter,
    write_csv,
    write_text,
)

# Detectron2 model zoo (COCO, 8 V100, batch 16): AP 1x, AP 3x, train s/iter, inference
# s/image, training memory GB (of the 1x schedule).
DETECTRON2_ZOO = {
    "RetinaNet R50-FPN (detectron2)": (
        "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
        37.4,
        38.7,
        0.205,
        0.041,
        4.1,
    ),
    "Faster R-CNN R50-FPN (detectron2)": (
        "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
        37.9,
        40.2,
        0.210,
        0.038,
        3.0,
    ),
}
# EfficientDet paper / google/automl README: (AP val, params M, GFLOPs, V100 bs1 ms).
EFFICIENTDET_PAPER = {
    0: (34.3, 3.9, 2.54, 10.2),
    1: (40.2, 6.6, 6.10, 13.5),
    2: (43.5, 8.1, 11.0, 17.7),
    3: (46.8, 12.0, 24.9, 28.0),
    4: (49.3, 20.7, 55.2, 42.8),
    5: (51.2, 33.7, 130.0, 72.5),
    6: (52.1, 51.9, 226.0, 92.8),
    7: (53.4, 51.9, 325.0, 122.0),
}
COLUMNS = [
    "model",
    "config",
    "input",
    "params_M",
    "gflops",
    "latency_ms",
    "your_AP",
    "ref_AP",
    "ref_AP_3x",
    "ref_params_M",
    "ref_gflops",
    "ref_train_s_iter",
    "ref_infer_s_im",
    "ref_train_mem_GB",
    "note",
]


def default_configs(root: str = "configs") -> List[str]:
    """Every YAML under ``root`` except the ``Base-*`` files that others inherit from."""
    files = glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)
    return sorted(f for f in files if not os.path.basename(f).startswith("Base-"))


def standard_size(cfg, override: Optional[str]) -> List[int]:
    """``[H, W]`` of a test image: ``override``, else the longest image the config's
    test resize yields (shorter side ``MIN_SIZE_TEST``, longer ``MAX_SIZE_TEST``)."""
    if override:
        return parse_size(override)
    short, long = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    return [short, max(short, long)]


def last_ap(output_dir: str) -> Optional[float]:
    """The last ``bbox/AP`` logged in ``output_dir/metrics.json``, or None."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    ap = None
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "bbox/AP" in record:
                ap = float(record["bbox/AP"])
    return ap


def find_ap(
    config_file: str, cfg, results_root: str, explicit: Dict[str, str]
) -> Tuple[Optional[float], str]:
    """``(AP, directory it came from)`` for a config's training run, or ``(None, "")``."""
    name = os.path.splitext(os.path.basename(config_file))[0]
    relative = os.path.splitext(os.path.relpath(config_file, "configs"))[0]
    candidates = [explicit[name]] if name in explicit else []
    candidates += [os.path.join(results_root, relative), os.path.join(results_root, name)]
    if cfg.OUTPUT_DIR not in ("./output", "output", ""):
        candidates.append(cfg.OUTPUT_DIR)
    for directory in candidates:
        ap = last_ap(directory)
        if ap is not None:
            return ap, directory
    return None, ""


def measure(cfg, size: List[int], device: torch.device) -> Tuple[Dict[str, Any], Callable[[], None]]:
    """Parameters and GFLOPs of the whole model built from ``cfg``, and a function that
    runs one inference (called once here, so that a model that cannot run fails now)."""
    model = build_subject(cfg, "model", device).eval()
    row: Dict[str, Any] = {"input": f"{size[0]}x{size[1]}", "params_M": count_parameters(model) / 1e6}
    inputs = make_inputs("model", 1, size, device)
    row["gflops"] = count_flops(model, inputs) / 1e9

    def infer() -> None:
        with torch.no_grad():
            model(inputs)

    infer()
    return row, infer


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


def detectron2_rows(
    args: argparse.Namespace, device: torch.device, runners: Dict[str, Callable[[], None]]
) -> List[Dict[str, Any]]:
    """Detectron2's reference rows; their inference functions go into ``runners``."""
    from detectron2 import model_zoo

    rows = []
    for model, (zoo_file, ap, ap3, train_s, infer_s, mem) in DETECTRON2_ZOO.items():
        config_file = model_zoo.get_config_file(zoo_file)
        cfg = load_config(config_file)
        size = standard_size(cfg, args.size)
        print(f"{model} at {size[0]}x{size[1]} ...", flush=True)
        row = {"model": model, "config": f"detectron2 model_zoo {zoo_file}"}
        measured, runners[row["config"]] = measure(cfg, size, device)
        row.update(measured)
        row.update(
            {
                "ref_AP": ap,
                "ref_AP_3x": ap3,
                "ref_train_s_iter": train_s,
                "ref_infer_s_im": infer_s,
                "ref_train_mem_GB": mem,
            }
        )
        rows.append(row)
    return rows


def config_rows(
    args: argparse.Namespace, device: torch.device, runners: Dict[str, Callable[[], None]]
) -> List[Dict[str, Any]]:
    """A row per config file that exists; inference functions of those that run go into
    ``runners``."""
    explicit = dict(item.split("=", 1) for item in args.result)
    rows = []
    for config_file in default_configs() if args.configs is None else args.configs:
        if not os.path.isfile(config_file):
            print(f"skipping {config_file}: no such file", flush=True)
            continue
        name = os.path.splitext(os.path.basename(config_file))[0]
        row: Dict[str, Any] = {"model": name, "config": config_file}
        try:
            cfg = load_config(config_file)
            size = standard_size(cfg, args.size)
            print(f"{name} at {size[0]}x{size[1]} ...", flush=True)
            measured, runners[config_file] = measure(cfg, size, device)
            row.update(measured)
        except Exception as e:  # one broken or unsupported config must not stop the table
            row["note"] = f"not measured: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{name}: {row['note']}", flush=True)
            cfg = None
        if cfg is not None:
            ap, directory = find_ap(config_file, cfg, args.results_root, explicit)
            if ap is not None:
                row["your_AP"] = ap
                row["eval_dataset"] = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "?"
                row["note"] = f"AP from {directory}, on {row['eval_dataset']}"
        match = re.search(r"EfficientDet-D(\d)", name)
        if match:
            ap, params, gflops, _ = EFFICIENTDET_PAPER[int(match.group(1))]
            row.update({"ref_AP": ap, "ref_params_M": params, "ref_gflops": gflops})
        rows.append(row)
    return rows


def plot(rows: List[Dict[str, Any]], path: str) -> str:
    """AP against GFLOPs: EfficientDet's published curve, Detectron2's published APs at
    our measured GFLOPs, and our configs' own APs where a training run evaluated on COCO
    was found (an AP on another dataset is printed, not plotted)."""
    nan = float("nan")
    groups = {
        "EfficientDet paper (D0-D7, its own GFLOPs)": [
            (f"D{k}", v[2], v[0]) for k, v in EFFICIENTDET_PAPER.items()
        ],
        "Detectron2 model zoo (published 3x AP, GFLOPs measured here)": [
            (f"{r['model'].split(' (')[0]} @{r.get('input', '?')}", r.get("gflops", nan), r["ref_AP_3x"])
            for r in rows
            if "ref_AP_3x" in r
        ],
        "bifpn_d2 configs (your COCO AP, GFLOPs measured here)": [
            (f"{r['model']} @{r.get('input', '?')}", r.get("gflops", nan), r["your_AP"])
            for r in rows
            if "your_AP" in r and r["eval_dataset"].startswith("coco")
        ],
    }
    # An AP on another dataset (e.g. the built-in synthetic one) is not comparable with COCO AP.
    for r in rows:
        if "your_AP" in r and not r["eval_dataset"].startswith("coco"):
            where = f"on {r['eval_dataset']}, not COCO"
            print(f"{r['model']}: AP {r['your_AP']:.1f} left out of the plot ({where})")
    return plot_scatter(
        groups,
        "GFLOPs (multiply-adds, one image)",
        "COCO box AP",
        path,
        title="AP vs GFLOPs",
        connect=["EfficientDet paper (D0-D7, its own GFLOPs)"],
        log_x=True,
    )


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Build the table described by the command line; returns its rows."""
    args = parse_args(argv)
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runners: Dict[str, Callable[[], None]] = {}
    rows = [] if args.no_detectron2 else detectron2_rows(args, device, runners)
    rows += config_rows(args, device, runners)
    if args.repeats > 0 and runners:
        print(f"timing {len(runners)} models, interleaved ...", flush=True)
        start = time.perf_counter()

        def progress(done: int, total: int) -> None:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (total - done)
            print(f"  round {done}/{total} ({args.warmup} warmup), eta {eta / 60:.1f} min", flush=True)

        times = interleaved_times(runners, args.repeats, args.warmup, device, on_round=progress)
        for row in rows:
            if row["config"] in times:
                row["latency_ms"] = 1000 * median(times[row["config"]])
    text = (
        f"# Model zoo comparison\n\nMeasured here: {device}, {args.threads} threads, torch "
        f"{torch.__version__}; latency = median of {args.repeats} interleaved runs at batch 1 after "
        f"{args.warmup} warmup; GFLOPs by fvcore (multiply-adds) at `input`. `ref_*` columns are "
        "published numbers: Detectron2 model zoo (8 V100, batch 16; AP of the 1x and 3x schedules) "
        "and the EfficientDet paper (AP, params, GFLOPs at its own input size). `your_AP`: the last "
        "bbox/AP in the training run's metrics.json, when found.\n\n" + markdown_table(rows, COLUMNS)
    )
    print("\n" + text)
    write_csv(rows, os.path.join(args.output_dir, "model_zoo.csv"), COLUMNS)
    write_text(text, os.path.join(args.output_dir, "model_zoo.md"))
    plot(rows, os.path.join(args.output_dir, "ap_vs_gflops.png"))
    print(f"wrote model_zoo.csv, model_zoo.md, ap_vs_gflops.png to {args.output_dir}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
