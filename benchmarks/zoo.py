"""A model-zoo-style table: our configs next to Detectron2's own R50-FPN detectors and the
EfficientDet paper's published numbers.

Each row is a ``dict`` with the :data:`ZOO_COLUMNS` it has: measured here are parameters
(millions), GFLOPs of one image at the row's ``input`` size (fvcore, one per
multiply-add) and inference latency (ms, batch 1); ``your_AP`` is the last ``bbox/AP`` of
the config's training run when one is found; ``ref_*`` columns are published numbers.
"""

import glob
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode

from bifpn_d2.engine.analysis import parse_size
from bifpn_d2.engine.config import load_config

from .measure import count_flops, count_parameters, interleaved_times, median
from .models import build_subject, make_inputs
from .report import plot_scatter, print_now

__all__ = [
    "DETECTRON2_ZOO",
    "EFFICIENTDET_PAPER",
    "ZOO_COLUMNS",
    "config_rows",
    "default_configs",
    "detectron2_rows",
    "find_ap",
    "last_ap",
    "measure_config",
    "plot_ap_vs_gflops",
    "standard_size",
    "time_models",
]

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
ZOO_COLUMNS = [
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

Runners = Dict[str, Callable[[], None]]


def default_configs(root: str = "configs") -> List[str]:
    """Every YAML under ``root`` except the ``Base-*`` files that others inherit from."""
    files = glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)
    return sorted(f for f in files if not os.path.basename(f).startswith("Base-"))


def standard_size(cfg: CfgNode, override: Optional[str]) -> List[int]:
    """``[H, W]`` of a test image: ``override``, else the longest image the config's
    test resize yields (shorter side ``MIN_SIZE_TEST``, longer ``MAX_SIZE_TEST``)."""
    if override:
        return parse_size(override)
    short, long = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    return [short, max(short, long)]


def last_ap(output_dir: str, dataset: str = "") -> Optional[float]:
    """The last ``bbox/AP`` logged in ``output_dir/metrics.json``, or None. A run evaluated
    on several datasets logs ``<dataset>/bbox/AP`` for each: then ``dataset``'s."""
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
            if not isinstance(record, dict):
                continue
            for key in (f"{dataset}/bbox/AP", "bbox/AP"):
                if key in record:
                    ap = float(record[key])
                    break
    return ap


def find_ap(
    config_file: str, cfg: CfgNode, results_root: str, explicit: Dict[str, str]
) -> Tuple[Optional[float], str]:
    """``(AP, directory it came from)`` for a config's training run, or ``(None, "")``.

    Looked for in ``explicit[config name]``, ``<results_root>/<config path under configs/
    without .yaml>``, ``<results_root>/<config name>``, then the config's own ``OUTPUT_DIR``.
    """
    name = os.path.splitext(os.path.basename(config_file))[0]
    relative = os.path.splitext(os.path.relpath(config_file, "configs"))[0]
    candidates = [explicit[name]] if name in explicit else []
    candidates += [os.path.join(results_root, relative), os.path.join(results_root, name)]
    if cfg.OUTPUT_DIR not in ("./output", "output", ""):
        candidates.append(cfg.OUTPUT_DIR)
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
    for directory in candidates:
        ap = last_ap(directory, dataset)
        if ap is not None:
            return ap, directory
    return None, ""


def measure_config(
    cfg: CfgNode, size: List[int], device: torch.device
) -> Tuple[Dict[str, Any], Callable[[], None]]:
    """Parameters and GFLOPs of the whole model built from ``cfg`` at ``size = [H, W]``,
    and a function that runs one inference (called once here, so that a model that
    cannot run fails now)."""
    model = build_subject(cfg, "model", device).eval()
    row: Dict[str, Any] = {"input": f"{size[0]}x{size[1]}", "params_M": count_parameters(model) / 1e6}
    inputs = make_inputs("model", 1, size, device)
    row["gflops"] = count_flops(model, inputs) / 1e9

    def infer() -> None:
        with torch.no_grad():
            model(inputs)

    infer()
    return row, infer


def detectron2_rows(
    size: Optional[str], device: torch.device, runners: Runners, say: Callable[[str], None] = print_now
) -> List[Dict[str, Any]]:
    """Detectron2's reference rows, measured at ``size`` (``"N"``, ``"HxW"`` or None for
    each config's test size); their inference functions go into ``runners``."""
    from detectron2 import model_zoo

    rows = []
    for model, (zoo_file, ap, ap3, train_s, infer_s, mem) in DETECTRON2_ZOO.items():
        cfg = load_config(model_zoo.get_config_file(zoo_file), ["MODEL.DEVICE", device.type])
        input_size = standard_size(cfg, size)
        say(f"{model} at {input_size[0]}x{input_size[1]} ...")
        row = {"model": model, "config": f"detectron2 model_zoo {zoo_file}"}
        measured, runners[row["config"]] = measure_config(cfg, input_size, device)
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
    config_files: Sequence[str],
    size: Optional[str],
    results_root: str,
    explicit: Dict[str, str],
    device: torch.device,
    runners: Runners,
    say: Callable[[str], None] = print_now,
) -> List[Dict[str, Any]]:
    """A row per config file that exists, measured at ``size`` as in
    :func:`detectron2_rows`, with its AP (:func:`find_ap` in ``results_root`` and the
    ``explicit`` config name -> run directory) and, for ``EfficientDet-D<n>``, the paper's
    numbers. Inference functions of the configs that run go into ``runners``."""
    rows = []
    for config_file in config_files:
        if not os.path.isfile(config_file):
            say(f"skipping {config_file}: no such file")
            continue
        name = os.path.splitext(os.path.basename(config_file))[0]
        row: Dict[str, Any] = {"model": name, "config": config_file}
        try:
            cfg = load_config(config_file, ["MODEL.DEVICE", device.type])
            input_size = standard_size(cfg, size)
            say(f"{name} at {input_size[0]}x{input_size[1]} ...")
            measured, runners[config_file] = measure_config(cfg, input_size, device)
            row.update(measured)
        except Exception as e:  # one broken or unsupported config must not stop the table
            row["note"] = f"not measured: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            say(f"{name}: {row['note']}")
            cfg = None
        if cfg is not None:
            ap, directory = find_ap(config_file, cfg, results_root, explicit)
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


def time_models(
    rows: List[Dict[str, Any]],
    runners: Runners,
    repeats: int,
    warmup: int,
    device: torch.device,
    on_round: Optional[Callable[[int, int], None]] = None,
) -> None:
    """Time every runner interleaved (:func:`interleaved_times`, same arguments) and set
    the median as ``latency_ms`` of the row whose ``config`` names it."""
    times = interleaved_times(runners, repeats, warmup, device, on_round=on_round)
    for row in rows:
        if row["config"] in times:
            row["latency_ms"] = 1000 * median(times[row["config"]])


def plot_ap_vs_gflops(rows: List[Dict[str, Any]], path: str, say: Callable[[str], None] = print_now) -> str:
    """AP against GFLOPs, as EfficientDet's Figure 1: EfficientDet's published curve,
    Detectron2's published APs at our measured GFLOPs, and our configs' own APs where a
    training run evaluated on COCO was found (an AP on another dataset is reported with
    ``say``, not plotted). Returns ``path``."""
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
            say(f"{r['model']}: AP {r['your_AP']:.1f} left out of the plot ({where})")
    return plot_scatter(
        groups,
        "GFLOPs (multiply-adds, one image)",
        "COCO box AP",
        path,
        title="AP vs GFLOPs",
        connect=["EfficientDet paper (D0-D7, its own GFLOPs)"],
        log_x=True,
    )
