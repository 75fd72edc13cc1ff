"""The neck study: which BiFPN choices decide whether it beats the FPN in the main job.

Every arm is the main job's RetinaNet (ResNet-18 from scratch, 320 px, batch 4, the
same LR schedule) with one neck, trained with several seeds on the built-in dataset and
evaluated with COCO AP. Arms are data: a config plus ``MODEL.BIFPN.*`` (or
``MODEL.FPN.*``) overrides. Every BiFPN arm spells out each studied key (from
:data:`BIFPN_BEFORE`, the BiFPN of the main job before this study, or
:data:`BIFPN_AFTER`), so an arm means the same model whatever the shipped config says.
"""
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .comparison import METRICS, Run

__all__ = ["ARMS", "Arm", "BIFPN_AFTER", "BIFPN_BEFORE", "GROUPS", "arm_runs", "summarize"]

FPN_CONFIG = "configs/synthetic/RetinaNet-R18-FPN.yaml"
BIFPN_CONFIG = "configs/synthetic/RetinaNet-R18-BiFPN.yaml"

# The BiFPN side of the main job before the study (configs/synthetic at that time).
BIFPN_BEFORE: Dict[str, str] = {
    "MODEL.BIFPN.OUT_CHANNELS": "128",
    "MODEL.BIFPN.NUM_CELLS": "3",
    "MODEL.BIFPN.TOP_BLOCK": "efficientdet",
    "MODEL.BIFPN.SEPARABLE_CONV": "True",
    "MODEL.BIFPN.NORM": "GN",
    "MODEL.BIFPN.FUSION": "fast_normalized",
    "MODEL.BIFPN.GRAPH": "bifpn",
    "MODEL.BIFPN.CONV_INIT": "xavier_uniform",
    "MODEL.BIFPN.ACTIVATION": "swish",
}
# What the study found; the shipped BiFPN config equals it.
BIFPN_AFTER: Dict[str, str] = dict(BIFPN_BEFORE)


@dataclass(frozen=True)
class Arm:
    """One model of the study: ``config`` with ``overrides`` (``{KEY: VALUE}``)."""

    name: str
    group: str
    question: str
    config: str
    overrides: Dict[str, str] = field(default_factory=dict)
    iters_factor: int = 1  # train this many times the main job's iterations
    eval_points: int = 1  # evaluations over training (AP against iterations when > 1)

    def opts(self) -> List[str]:
        return [item for pair in self.overrides.items() for item in pair]


def _bifpn(name: str, group: str, question: str, base: Dict[str, str], **changes: str) -> Arm:
    overrides = dict(base)
    overrides.update({f"MODEL.BIFPN.{k}": v for k, v in changes.items()})
    return Arm(name, group, question, BIFPN_CONFIG, overrides)


ARMS: List[Arm] = [
    Arm("fpn", "reference", "Detectron2's FPN: P6/P7 convs from C5, sum fusion, GN, width 128", FPN_CONFIG),
    _bifpn("bifpn_before", "reference", "the main job's BiFPN before the study", BIFPN_BEFORE),
    _bifpn("top_p6p7_c5", "top block", "learned strided 3x3 P6/P7 from C5 instead of 1x1 conv + max-pool",
           BIFPN_BEFORE, TOP_BLOCK="p6p7_c5"),
    _bifpn("dense_conv", "conv", "dense 3x3 after each fusion instead of separable (more GFLOPs)",
           BIFPN_BEFORE, SEPARABLE_CONV="False"),
    _bifpn("cells6", "cells x width", "6 cells of width 128 (GFLOPs still below the FPN)",
           BIFPN_BEFORE, NUM_CELLS="6"),
    _bifpn("w96_dense_cells3", "cells x width", "width 96 with 3 dense cells (GFLOPs below the FPN)",
           BIFPN_BEFORE, OUT_CHANNELS="96", SEPARABLE_CONV="False"),
    _bifpn("norm_bn", "norm", "BN (EfficientDet's, momentum 0.01) in the cells instead of GN",
           BIFPN_BEFORE, NORM="BN"),
    _bifpn("norm_none", "norm", "no norm in the cells", BIFPN_BEFORE, NORM=""),
    _bifpn("fusion_softmax", "fusion", "softmax fusion instead of fast normalized", BIFPN_BEFORE,
           FUSION="softmax"),
    _bifpn("fusion_sum", "fusion", "plain sum fusion", BIFPN_BEFORE, FUSION="sum"),
    _bifpn("graph_panet", "graph", "PANet cells (no same-level skip edges)", BIFPN_BEFORE, GRAPH="panet"),
    _bifpn("init_c2_xavier", "init", "cell convs initialised as Detectron2's FPN (variance 1/fan-in)",
           BIFPN_BEFORE, CONV_INIT="c2_xavier"),
]
GROUPS = sorted({arm.group for arm in ARMS})


def arm_runs(
    arms: Sequence[Arm], seeds: Sequence[int], output_dir: Path, base_opts: Sequence[str], schedule
) -> List[Tuple[Arm, Run]]:
    """One :class:`Run` per arm and seed, in ``output_dir/<arm>/seed<k>``. ``schedule(arm)``
    gives the overrides of the arm's training length (and evaluation period)."""
    return [
        (arm, Run(arm.name, arm.config, output_dir / arm.name / f"seed{seed}",
                  tuple(base_opts) + tuple(arm.opts()) + tuple(schedule(arm)), seed))
        for arm in arms
        for seed in seeds
    ]


def _mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(
    results: Sequence[Tuple[Arm, Run]], costs: Dict[str, Dict[str, float]], reference: Optional[str] = "fpn"
) -> List[Dict[str, object]]:
    """One row per arm: mean and sample standard deviation of AP over its seeds, the seeds'
    APs, mean AP50/AP_small/medium/large, the difference to ``reference``'s mean AP, cost
    (``costs[arm]``: GFLOPs, neck params) and mean seconds per training iteration."""
    by_arm: Dict[str, List[Run]] = {}
    arms: Dict[str, Arm] = {}
    for arm, run in results:
        by_arm.setdefault(arm.name, []).append(run)
        arms[arm.name] = arm
    ref_ap = _mean_sd([r.metrics.get("bbox/AP", math.nan) for r in by_arm.get(reference, [])])[0]
    rows = []
    for name, runs in by_arm.items():
        ap, sd = _mean_sd([r.metrics.get("bbox/AP", math.nan) for r in runs])
        row: Dict[str, object] = {
            "arm": name,
            "group": arms[name].group,
            "seeds": len(runs),
            "AP": ap,
            "AP sd": sd,
            "AP per seed": " / ".join(f"{r.metrics.get('bbox/AP', math.nan):.1f}" for r in runs),
            "dAP vs FPN": ap - ref_ap,
        }
        for column, key in METRICS[1:]:
            if column != "AP75":
                row[column] = _mean_sd([r.metrics.get(key, math.nan) for r in runs])[0]
        row.update(costs.get(name, {}))
        row["s/iter"] = _mean_sd([r.sec_per_iter for r in runs])[0]
        row["what it tests"] = arms[name].question
        rows.append(row)
    return rows


# Columns of the study table, in order (the CSV has them all, with full precision).
COLUMNS = ["arm", "group", "seeds", "AP", "AP sd", "AP per seed", "dAP vs FPN", "AP50", "AP_small", "AP_medium",
           "AP_large", "GFLOPs", "neck_params_M", "s/iter", "what it tests"]


def fusion_speed(repeats: int = 50, size: Tuple[int, int] = (40, 40), channels: int = 128) -> Dict[str, float]:
    """Milliseconds of one fusion of 3 inputs, forward and backward, at P3 of the main job
    (batch 4): fast normalized against softmax (and sum for scale), medians of
    interleaved runs in this process."""
    import torch

    from ..benchmark import interleaved_times, median
    from ..layers import WeightedFusion

    inputs = [torch.randn(4, channels, *size, requires_grad=True) for _ in range(3)]
    fusions = {m: WeightedFusion(3, m) for m in ("fast_normalized", "softmax", "sum")}

    def step(fusion):
        return lambda: fusion(inputs).sum().backward()

    times = interleaved_times({m: step(f) for m, f in fusions.items()}, repeats, warmup=5)
    return {m: 1000 * median(t) for m, t in times.items()}


def _plot_arms(rows, results, path: Path, title: str) -> None:
    from ..benchmark.report import _pyplot, save_figure

    plt = _pyplot()
    order = [r["arm"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(order) + 1.8), sharey=True)
    for ax, (column, key) in zip(axes, [("AP", "bbox/AP"), ("AP_large", "bbox/APl")]):
        means = [r[column] for r in rows]
        ax.barh(range(len(order)), means, color=["C1" if r["group"] == "reference" else "C0" for r in rows],
                alpha=0.6)
        for arm, run in results:
            ax.plot(run.metrics.get(key, math.nan), order.index(arm.name), "k.", markersize=6)
        fpn = [r[column] for r in rows if r["arm"] == "fpn"]
        if fpn:
            ax.axvline(fpn[0], color="C1", linestyle="--", linewidth=1, label="FPN mean")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(f"{column} (%): bar = mean over seeds, dots = seeds")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(order)), order, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, str(path))


def _plot_schedule(results, path: Path) -> bool:
    from ..benchmark.report import _pyplot, save_figure

    curves = [(arm, run) for arm, run in results if len(run.ap_curve) > 1]
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: Dict[str, str] = {}
    for arm, run in curves:
        colour = colours.setdefault(arm.name, f"C{len(colours)}")
        xs, ys = zip(*run.ap_curve)
        ax.plot(xs, ys, "-o", color=colour, markersize=3, alpha=0.8,
                label=arm.name if run.seed == min(r.seed for a, r in curves if a.name == arm.name) else None)
    ax.set(xlabel="iteration", ylabel="COCO AP (%)", title="AP against training length (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, str(path))
    return True


def _plot_fusion(results, speed: Dict[str, float], path: Path) -> bool:
    """Normalised weights of three nodes of the last cell over training, fast normalized
    (solid) against softmax (dashed), first seed of each arm."""
    from ..benchmark.report import _pyplot, save_figure

    pick = {}
    for arm, run in results:
        fusion = arm.overrides.get("MODEL.BIFPN.FUSION")
        if fusion in ("fast_normalized", "softmax") and run.scalars and fusion not in pick:
            if arm.name in ("bifpn_before", "fusion_softmax"):
                pick[fusion] = run
    if len(pick) < 2:
        return False
    keys = sorted(pick["fast_normalized"].scalars)
    last_cell = max(int(k.split(".cells.")[1].split(".")[0]) for k in keys)
    nodes = sorted({int(k.split(".nodes.")[1].split(".")[0]) for k in keys})
    shown = [nodes[1], nodes[len(nodes) // 2 - 1], nodes[len(nodes) // 2 + 1]]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, node in zip(axes, shown):
        prefix = f"fusion/backbone.cells.{last_cell}.nodes.{node}.fusion/"
        for fusion, style in (("fast_normalized", "-"), ("softmax", "--")):
            series = {k: v for k, v in pick[fusion].scalars.items() if k.startswith(prefix)}
            for k, values in sorted(series.items()):
                xs, ys = zip(*values)
                ax.plot(xs, ys, style, color=f"C{int(k.rsplit('/', 1)[1])}",
                        label=f"{fusion} input {k.rsplit('/', 1)[1]}")
        ax.set(title=f"cell {last_cell}, node {node}", xlabel="iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("normalised input weight")
    axes[-1].legend(fontsize=7)
    speeds = ", ".join(f"{m} {ms:.2f} ms" for m, ms in speed.items())
    fig.suptitle(f"Fusion weights over training (fast normalized solid, softmax dashed); "
                 f"one 3-input fusion fwd+bwd at P3: {speeds}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, str(path))
    return True


def write_report(rows, results, speed: Dict[str, float], output_dir: Path, title: str) -> List[Path]:
    """``neck_study.md`` / ``.csv`` and the PNGs into ``output_dir``; returns their paths."""
    from ..benchmark.report import markdown_table, write_csv, write_text

    output_dir.mkdir(parents=True, exist_ok=True)
    shown = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    text = f"{title}\n\n" + markdown_table(shown, COLUMNS, digits=3)
    if speed:
        text += "\nOne 3-input fusion, forward + backward, batch 4 x 128 x 40 x 40 (ms, median): " + ", ".join(
            f"{m} {ms:.2f}" for m, ms in speed.items()) + "\n"
    paths = [Path(write_text(text, str(output_dir / "neck_study.md"))),
             Path(write_csv(rows, str(output_dir / "neck_study.csv"), COLUMNS))]
    _plot_arms(rows, results, output_dir / "neck_study.png", title)
    paths.append(output_dir / "neck_study.png")
    if _plot_schedule(results, output_dir / "neck_study_schedule.png"):
        paths.append(output_dir / "neck_study_schedule.png")
    if _plot_fusion(results, speed, output_dir / "neck_study_fusion.png"):
        paths.append(output_dir / "neck_study_fusion.png")
    return paths
