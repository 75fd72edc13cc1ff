"""The neck study: which BiFPN choices decide whether it beats the FPN in the main job.

Every arm is the main job's RetinaNet (ResNet-18 from scratch, 320 px, batch 4, the
same LR schedule) with one neck, trained with several seeds on the built-in dataset and
evaluated with COCO AP. Arms are data: a config plus ``MODEL.BIFPN.*`` (or
``MODEL.FPN.*``) overrides. Every BiFPN arm spells out each studied key (from
:data:`BIFPN_BEFORE`, the BiFPN of the main job before this study, or
:data:`BIFPN_AFTER`), so an arm means the same model whatever the shipped config says.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .comparison import Run, summarize
from .plots import plot_ap_curves, plot_arms, plot_fusion_weights

__all__ = [
    "ARMS",
    "Arm",
    "BIFPN_AFTER",
    "BIFPN_BEFORE",
    "GROUPS",
    "arm_runs",
    "summarize_arms",
    "write_report",
]

FPN_CONFIG = "configs/synthetic/RetinaNet-R18-FPN.yaml"
BIFPN_CONFIG = "configs/synthetic/RetinaNet-R18-BiFPN.yaml"

# The BiFPN side of the main job before the study (configs/synthetic at that time).
BIFPN_BEFORE: Dict[str, str] = {
    "MODEL.BIFPN.OUT_CHANNELS": "128",
    "MODEL.BIFPN.NUM_CELLS": "3",
    "MODEL.BIFPN.TOP_BLOCK": "efficientdet",
    "MODEL.BIFPN.SEPARABLE_CONV": "True",
    "MODEL.BIFPN.NORM": "GN",
    "MODEL.BIFPN.FUSE_TYPE": "fast_normalized",
    "MODEL.BIFPN.GRAPH": "bifpn",
    "MODEL.BIFPN.CONV_INIT": "xavier_uniform",
    "MODEL.BIFPN.ACTIVATION": "swish",
    "MODEL.BIFPN.RESIDUAL": "False",
}
# What the study found; the shipped BiFPN config equals it: residual cells (each cell
# starts as the identity, so three cells train like one and then grow) and learned P6/P7.
BIFPN_AFTER: Dict[str, str] = dict(
    BIFPN_BEFORE, **{"MODEL.BIFPN.RESIDUAL": "True", "MODEL.BIFPN.TOP_BLOCK": "p6p7_c5"}
)


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


# (name, group, what it tests, changes to BIFPN_BEFORE)
_BIFPN_ARMS = [
    ("bifpn_before", "reference", "the main job's BiFPN before the study", {}),
    ("top_p6p7_c5", "top block", "learned strided 3x3 P6/P7 from C5 instead of 1x1 conv + max-pool",
     {"TOP_BLOCK": "p6p7_c5"}),
    ("dense_conv", "conv", "dense 3x3 after each fusion instead of separable (more GFLOPs)",
     {"SEPARABLE_CONV": "False"}),
    ("cells6", "cells x width", "6 cells of width 128 (GFLOPs still below the FPN)", {"NUM_CELLS": "6"}),
    ("w96_dense_cells3", "cells x width", "width 96 with 3 dense cells (GFLOPs below the FPN)",
     {"OUT_CHANNELS": "96", "SEPARABLE_CONV": "False"}),
    ("norm_bn", "norm", "BN (EfficientDet's, momentum 0.01) in the cells instead of GN", {"NORM": "BN"}),
    ("norm_none", "norm", "no norm in the cells", {"NORM": ""}),
    ("norm_bn_m0.1", "norm", "BN with PyTorch's momentum 0.1 (running statistics catch up in a short run)",
     {"NORM": "BN", "NORM_MOMENTUM": "0.1"}),
    ("norm_bn_m0.1_top_p6p7_c5", "norm", "BN (momentum 0.1) and learned P6/P7 from C5",
     {"NORM": "BN", "NORM_MOMENTUM": "0.1", "TOP_BLOCK": "p6p7_c5"}),
    ("fusion_softmax", "fusion", "softmax fusion instead of fast normalized", {"FUSE_TYPE": "softmax"}),
    ("fusion_sum", "fusion", "plain sum fusion", {"FUSE_TYPE": "sum"}),
    ("graph_panet", "graph", "PANet cells (no same-level skip edges)", {"GRAPH": "panet"}),
    ("init_c2_xavier", "init", "cell convs initialised as Detectron2's FPN (variance 1/fan-in)",
     {"CONV_INIT": "c2_xavier"}),
    ("neck_lr_x3", "lr", "the BiFPN's parameters at 3x the base learning rate", {"LR_FACTOR": "3.0"}),
    ("neck_lr_x0.3", "lr", "the BiFPN's parameters at 0.3x the base learning rate", {"LR_FACTOR": "0.3"}),
    ("cells1", "depth", "1 cell instead of 3", {"NUM_CELLS": "1"}),
    ("cells2", "depth", "2 cells instead of 3", {"NUM_CELLS": "2"}),
    ("cells1_top_p6p7_c5", "depth", "1 cell and learned P6/P7 from C5",
     {"NUM_CELLS": "1", "TOP_BLOCK": "p6p7_c5"}),
    ("cells1_bn_m0.1", "depth", "1 cell with BN (momentum 0.1)",
     {"NUM_CELLS": "1", "NORM": "BN", "NORM_MOMENTUM": "0.1"}),
    ("residual", "depth", "residual cells (an identity path, starting as the identity)",
     {"RESIDUAL": "True"}),
    ("residual_cells6", "depth", "6 residual cells (GFLOPs still below the FPN)",
     {"RESIDUAL": "True", "NUM_CELLS": "6"}),
]
_FPN = Arm("fpn", "reference", "Detectron2's FPN: P6/P7 convs from C5, sum fusion, GN, width 128", FPN_CONFIG)
_AFTER = Arm("bifpn_after", "reference", "the main job's BiFPN after the study", BIFPN_CONFIG, BIFPN_AFTER)


def _longer(arm: Arm, factor: int = 4, eval_points: int = 8) -> Arm:
    """``arm`` trained ``factor`` times longer, evaluated ``eval_points`` times on the way."""
    question = f"{arm.name} trained {factor}x longer, AP measured {eval_points} times"
    return Arm(f"{arm.name}_{factor}x", "schedule", question, arm.config, arm.overrides, factor, eval_points)


_BIFPN = [_bifpn(name, group, question, BIFPN_BEFORE, **changes)
          for name, group, question, changes in _BIFPN_ARMS]
ARMS: List[Arm] = [_FPN, _AFTER] + _BIFPN + [_longer(arm) for arm in (_FPN, _BIFPN[0], _AFTER)]
GROUPS = sorted({arm.group for arm in ARMS})


def arm_runs(
    arms: Sequence[Arm], seeds: Sequence[int], output_dir: Path, base_opts: Sequence[str], schedule
) -> List[Tuple[Arm, Run]]:
    """One :class:`Run` per arm and seed, in ``output_dir/<arm>/seed<k>``. ``schedule(arm)``
    gives the overrides of the arm's training length (and evaluation period)."""
    return [
        (
            arm,
            Run(
                arm.name,
                arm.config,
                output_dir / arm.name / f"seed{seed}",
                tuple(base_opts) + tuple(arm.opts()) + tuple(schedule(arm)),
                seed,
            ),
        )
        for arm in arms
        for seed in seeds
    ]


def summarize_arms(
    results: Sequence[Tuple[Arm, Run]], costs: Dict[str, Dict[str, float]], reference: str = "fpn"
) -> List[Dict[str, object]]:
    """One row per arm (see :func:`~benchmarks.comparison.summarize`) with its group,
    cost (``costs[arm]``: GFLOPs, parameters) and the question it answers."""
    groups: Dict[str, List[Run]] = {}
    arms: Dict[str, Arm] = {}
    for arm, run in results:
        groups.setdefault(arm.name, []).append(run)
        arms[arm.name] = arm
    rows = summarize(groups, reference)
    for row in rows:
        arm = arms[row["model"]]
        row["group"] = arm.group
        row.update(costs.get(arm.name, {}))
        row["what it tests"] = arm.question
    return rows


# Columns of the study table, in order (the CSV has them all, with full precision).
COLUMNS = [
    "model",
    "group",
    "seeds",
    "AP",
    "AP sd",
    "AP per seed",
    "AP - fpn",
    "AP50",
    "AP_small",
    "AP_medium",
    "AP_large",
    "GFLOPs",
    "neck_params_M",
    "s/iter",
    "what it tests",
]


def fusion_speed(
    repeats: int = 50, size: Tuple[int, int] = (40, 40), channels: int = 128
) -> Dict[str, float]:
    """Milliseconds of one fusion of 3 inputs, forward and backward, at P3 of the main job
    (batch 4): fast normalized against softmax (and sum for scale), medians of
    interleaved runs in this process."""
    import torch

    from bifpn_d2.layers import WeightedFusion

    from .measure import interleaved_times, median

    inputs = [torch.randn(4, channels, *size, requires_grad=True) for _ in range(3)]
    fusions = {m: WeightedFusion(3, m) for m in ("fast_normalized", "softmax", "sum")}

    def step(fusion):
        return lambda: fusion(inputs).sum().backward()

    times = interleaved_times({m: step(f) for m, f in fusions.items()}, repeats, warmup=5)
    return {m: 1000 * median(t) for m, t in times.items()}


def write_report(
    rows: Sequence[Dict[str, object]],
    results: Sequence[Tuple[Arm, Run]],
    speed: Dict[str, float],
    output_dir: Path,
    title: str,
) -> List[Path]:
    """``neck_study.md`` / ``.csv`` and the PNGs into ``output_dir``; returns their paths."""
    from .report import markdown_table, write_csv, write_text

    groups: Dict[str, List[Run]] = {}
    for arm, run in results:
        groups.setdefault(arm.name, []).append(run)
    shown = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    text = f"{title}\n\n" + markdown_table(shown, COLUMNS, digits=3)
    speeds = ", ".join(f"{m} {ms:.2f} ms" for m, ms in speed.items())
    if speed:
        text += f"\nOne 3-input fusion, forward + backward, 4 x 128 x 40 x 40 (median): {speeds}\n"
    paths = [
        write_text(text, str(output_dir / "neck_study.md")),
        write_csv(rows, str(output_dir / "neck_study.csv"), COLUMNS),
        plot_arms(rows, groups, str(output_dir / "neck_study.png"), title),
    ]
    curves = {name: runs for name, runs in groups.items() if any(len(r.ap_curve) > 1 for r in runs)}
    if curves:
        paths.append(
            plot_ap_curves(
                curves,
                str(output_dir / "neck_study_schedule.png"),
                "AP against training length (one line per seed)",
            )
        )
    fusion_runs = {}
    for arm, run in results:
        if arm.name in ("bifpn_before", "fusion_softmax") and run.scalars:
            fusion_runs.setdefault(arm.overrides["MODEL.BIFPN.FUSE_TYPE"], run)
    if len(fusion_runs) == 2:
        paths.append(
            plot_fusion_weights(
                fusion_runs,
                str(output_dir / "neck_study_fusion.png"),
                f"Fusion weights over training; one 3-input fusion fwd+bwd at P3: {speeds}",
            )
        )
    return [Path(p) for p in paths]
