"""The neck study: which BiFPN choices decide whether it beats the FPN, for every
meta-architecture a user switches.

A :class:`Pair` is one detector or segmenter of the built-in dataset's recipe (ResNet-18
from scratch, 320 px, batch 4) with an FPN config and a BiFPN config that differ only in
the neck: RetinaNet, Faster R-CNN, Mask R-CNN, semantic FPN. Every *arm* is one neck of
one pair, trained with several seeds on ``synthetic_shapes_train`` and evaluated on the
*dev* split (where choices are made), the reporting split ``val`` and the two transfer
sets (never used to choose). Arms are data: a config plus ``MODEL.BIFPN.*`` (or
``MODEL.FPN.*``) overrides. Every BiFPN arm spells out each studied key (from
:data:`BIFPN_BEFORE`, the BiFPN of the main job before the first study, or
:data:`BIFPN_AFTER`), so an arm means the same model whatever the shipped config says.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .comparison import Run, mean_and_sd
from .plots import plot_ap_curves, plot_fusion_weights, plot_pairs

__all__ = [
    "ARMS",
    "Arm",
    "BIFPN_AFTER",
    "BIFPN_AFTER_CELLS1_W192",
    "BIFPN_BEFORE",
    "GROUPS",
    "LN_TOP_C5_AFTER_RECIPE",
    "LN_TOP_P5_CELLS1_W152_RECIPE",
    "LN_TOP_P5_RECIPE",
    "SHIPPED_RECIPES",
    "arm_runs",
    "compare_to_fpn",
    "pool_studies",
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
# The arm norm_ln_top_p6p7_p5, chosen on the dev split of RetinaNet, Faster and Mask R-CNN:
# BIFPN_AFTER with LN in the cells and P6/P7 (P6 for R-CNN) made after them from their P5.
LN_TOP_P5_RECIPE: Dict[str, str] = dict(
    BIFPN_AFTER, **{"MODEL.BIFPN.NORM": "LN", "MODEL.BIFPN.TOP_BLOCK": "p6p7_p5"}
)
# The arm norm_ln_top_p6p7_c5_after, chosen on RetinaNet's dev split over LN_TOP_P5_RECIPE:
# P6/P7 from C5 as the FPN makes them, joined after the cells.
LN_TOP_C5_AFTER_RECIPE: Dict[str, str] = dict(LN_TOP_P5_RECIPE, **{"MODEL.BIFPN.TOP_BLOCK": "p6p7_c5_after"})
# One cell, wider: the GFLOPs one cell saves spent on width. Chosen on the dev splits over three
# cells, then over one cell at 128 (in 300-400-iteration runs the later cells do not train):
# Faster R-CNN's arm norm_ln_top_p6p7_p5_cells1_w152 (LN_TOP_P5_RECIPE, 152 channels) and
# semantic FPN's cells1_w192 (BIFPN_AFTER, one cell of GN, 192 channels).
_ONE_CELL = {"MODEL.BIFPN.NUM_CELLS": "1"}
LN_TOP_P5_CELLS1_W152_RECIPE: Dict[str, str] = {
    **LN_TOP_P5_RECIPE, **_ONE_CELL, "MODEL.BIFPN.OUT_CHANNELS": "152"
}
BIFPN_AFTER_CELLS1_W192: Dict[str, str] = {**BIFPN_AFTER, **_ONE_CELL, "MODEL.BIFPN.OUT_CHANNELS": "192"}
# Each pair's recipe before the arms that vary it (_RECIPE_ARMS: one key, or two together). Semantic FPN
# keeps GN (BIFPN_AFTER's): LN was not ahead on its dev split.
RECIPES_VARIED: Dict[str, Dict[str, str]] = {
    "retinanet": LN_TOP_C5_AFTER_RECIPE,
    "faster_rcnn": LN_TOP_P5_CELLS1_W152_RECIPE,
    "mask_rcnn": LN_TOP_P5_RECIPE,
    "semantic_fpn": BIFPN_AFTER_CELLS1_W192,
}
# What each pair's synthetic BiFPN config ships, and what its FPN config's switch
# (MODEL.BACKBONE.NAME alone) builds: Mask R-CNN's dev split then took its arm
# recipe_fusion_input2 (each node's own-level input starts at twice the weight), semantic
# FPN's recipe_neck_warmup200_fusion_input2 (that, and the neck warmed up over 200
# iterations, the rest over 50).
_FUSION_INPUT2 = {"MODEL.BIFPN.FUSION_INPUT_WEIGHT": "2.0"}
SHIPPED_RECIPES: Dict[str, Dict[str, str]] = {
    **RECIPES_VARIED,
    "mask_rcnn": {**RECIPES_VARIED["mask_rcnn"], **_FUSION_INPUT2},
    "semantic_fpn": {**RECIPES_VARIED["semantic_fpn"], "MODEL.BIFPN.WARMUP_ITERS": "200", **_FUSION_INPUT2},
}


# Where every run is evaluated: the split choices are made on, the reporting split, and
# the transfer sets (other generator settings; see bifpn_d2.data).
DEV, VAL = "synthetic_shapes_dev", "synthetic_shapes_val"
TRANSFER = ("synthetic_shapes_transfer_large", "synthetic_shapes_transfer_small")
EVAL_SPLITS = (DEV, VAL) + TRANSFER


@dataclass(frozen=True)
class Pair:
    """An FPN config and a BiFPN config that differ only in the neck."""

    name: str
    fpn_config: str
    bifpn_config: str
    primary: str  # the metric that decides ("bbox/AP", "segm/AP", "sem_seg/mIoU")
    task_suffix: str = ""  # of the dataset names it trains and evaluates on ("_sem_seg")

    def test_datasets(self) -> List[str]:
        return [name + self.task_suffix for name in EVAL_SPLITS]


PAIRS: Dict[str, Pair] = {
    p.name: p
    for p in (
        Pair("retinanet", "configs/synthetic/RetinaNet-R18-FPN.yaml",
             "configs/synthetic/RetinaNet-R18-BiFPN.yaml", "bbox/AP"),
        Pair("faster_rcnn", "configs/synthetic/FasterRCNN-R18-FPN.yaml",
             "configs/synthetic/FasterRCNN-R18-BiFPN.yaml", "bbox/AP"),
        Pair("mask_rcnn", "configs/synthetic/MaskRCNN-R18-FPN.yaml",
             "configs/synthetic/MaskRCNN-R18-BiFPN.yaml", "segm/AP"),
        Pair("semantic_fpn", "configs/synthetic/SemanticFPN-R18-FPN.yaml",
             "configs/synthetic/SemanticFPN-R18-BiFPN.yaml", "sem_seg/mIoU", "_sem_seg"),
    )
}


@dataclass(frozen=True)
class Arm:
    """One model of the study: ``config`` with ``overrides`` (``{KEY: VALUE}``), in ``pair``."""

    name: str
    group: str
    question: str
    config: str
    overrides: Dict[str, str] = field(default_factory=dict)
    iters_factor: int = 1  # train this many times the main job's iterations
    eval_points: int = 1  # evaluations over training (AP against iterations when > 1)
    pair: str = "retinanet"

    @property
    def key(self) -> str:
        """``pair/name``: unique over the study, and the arm's folder."""
        return f"{self.pair}/{self.name}"

    def opts(self) -> List[str]:
        pair = PAIRS[self.pair]
        tests = "(" + "".join(f"'{name}'," for name in pair.test_datasets()) + ")"
        return [item for kv in self.overrides.items() for item in kv] + ["DATASETS.TEST", tests]


def _changed(base: Dict[str, str], changes: Dict[str, str]) -> Dict[str, str]:
    """``base`` overrides with ``changes`` (``{BIFPN_KEY: VALUE}``, under ``MODEL.BIFPN``)."""
    return {**base, **{f"MODEL.BIFPN.{k}": v for k, v in changes.items()}}


def _bifpn(name: str, group: str, question: str, base: Dict[str, str], **changes: str) -> Arm:
    return Arm(name, group, question, BIFPN_CONFIG, _changed(base, changes))


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

# Every other pair: the same questions, asked of its own BiFPN. "shipped" is what its
# config shipped before this study (BIFPN_BEFORE: 3 plain cells, EfficientDet's top block);
# "candidate" is what won for RetinaNet (BIFPN_AFTER), tried as the default for all.
# The LN recipe: LN norms, P6/P7 by strided convs from the cells' P5 (norm_ln_top_p6p7_p5);
# the arms that vary it start from it.
_LN_P5 = {"NORM": "LN", "TOP_BLOCK": "p6p7_p5"}
_LN_C5_AFTER = {"NORM": "LN", "TOP_BLOCK": "p6p7_c5_after"}
_PAIR_ARMS = [  # (name, group, what it tests, changes to BIFPN_AFTER)
    ("candidate", "reference", "residual cells, learned P6 (P6/P7) from C5: RetinaNet's winner", {}),
    ("shipped", "reference", "3 plain cells, EfficientDet's max-pool top block (as shipped before)",
     {"RESIDUAL": "False", "TOP_BLOCK": "efficientdet"}),
    ("plain", "residual", "the candidate with plain cells", {"RESIDUAL": "False"}),
    ("residual_scale1", "residual", "the candidate's residual cells starting at their full change "
     "(output norm scales 1, not 0: input + cell)", {"RESIDUAL_SCALE": "1.0"}),
    ("residual_scale0.1", "residual", "the candidate's residual cells starting at a tenth of their change "
     "(output norm scales 0.1)", {"RESIDUAL_SCALE": "0.1"}),
    ("top_efficientdet", "top block", "the candidate with EfficientDet's max-pool top block",
     {"TOP_BLOCK": "efficientdet"}),
    ("top_maxpool", "top block", "the candidate with P6 max-pooled from the cells' P5, after them "
     "(the top block of the FPN's R-CNN pyramids; one level only)", {"TOP_BLOCK": "maxpool"}),
    ("top_p6p7_p5", "top block", "the candidate with P6/P7 by strided convs from the cells' P5, after them "
     "(FCOS's top block: the coarsest levels pass through no cell and no norm, as the FPN's)",
     {"TOP_BLOCK": "p6p7_p5"}),
    ("cells1", "depth", "the candidate with one cell, not three (Faster R-CNN's dev split chose one: in "
     "these short runs the later residual cells do not train)", {"NUM_CELLS": "1"}),
    ("cells1_w192", "width", "cells1 192 channels wide, not 128 (the neck and the head that reads it): one "
     "cell spends fewer GFLOPs than the FPN, width spends them back (semantic FPN: 5.44 against the FPN's "
     "5.85)", {"NUM_CELLS": "1", "OUT_CHANNELS": "192"}),
    ("cells1_w224", "width", "cells1 224 channels wide: more of what cells1_w192 did (semantic FPN: 5.78 "
     "GFLOPs, the widest one cell under the FPN's 5.85)", {"NUM_CELLS": "1", "OUT_CHANNELS": "224"}),
    ("cells6", "depth", "the candidate with 6 residual cells", {"NUM_CELLS": "6"}),
    ("norm_bn_m0.1", "norm", "the candidate with BN (momentum 0.1) instead of GN",
     {"NORM": "BN", "NORM_MOMENTUM": "0.1"}),
    ("norm_ln", "norm", "the candidate with LN (over channels at each pixel) instead of GN: no statistics "
     "over a coarse level's few pixels", {"NORM": "LN"}),
    ("norm_ln_top_p6p7_p5", "norm", "norm_ln and top_p6p7_p5 together (on RetinaNet's dev split LN led "
     "on AP, the top block after the cells on large objects)", _LN_P5),
    ("norm_ln_top_p6p7_c5_after", "top block", "norm_ln_top_p6p7_p5 with P6/P7 from C5 (the FPN's: "
     "RetinaNet's strided convs, wider input), still after the cells: is what P6/P7 read where large "
     "objects are lost?",
     _LN_C5_AFTER),
    ("norm_ln_top_p6p7_c5_after_cells1", "depth", "norm_ln_top_p6p7_c5_after (RetinaNet's shipped recipe) "
     "with one cell, not three, as Faster R-CNN's and semantic FPN's dev splits chose",
     {**_LN_C5_AFTER, "NUM_CELLS": "1"}),
    ("channel_fast_normalized", "fusion",
     "the candidate with google/automl's channel-wise fast normalized fusion",
     {"FUSE_TYPE": "channel_fast_normalized"}),
    ("channel_softmax", "fusion", "the candidate with google/automl's channel-wise softmax fusion",
     {"FUSE_TYPE": "channel_softmax"}),
    ("qufpn", "graph", "the candidate with effdet's QuFPN cells (four paths; more GFLOPs per cell)",
     {"GRAPH": "qufpn"}),
    ("neck_lr2", "schedule", "the candidate with the neck's learning rate doubled (MODEL.BIFPN.LR_FACTOR 2)",
     {"LR_FACTOR": "2.0"}),
    ("neck_lr2_top_efficientdet", "schedule", "neck_lr2 with EfficientDet's max-pool top block (each ahead "
     "of the candidate on Faster R-CNN's dev split)", {"LR_FACTOR": "2.0", "TOP_BLOCK": "efficientdet"}),
    ("norm_ln_top_p6p7_p5_lr2", "schedule", "norm_ln_top_p6p7_p5 with the neck's learning rate doubled "
     "(on the candidate, neck_lr2 narrowed Faster R-CNN's large-object gap: is the neck undertrained?)",
     {**_LN_P5, "LR_FACTOR": "2.0"}),
    ("norm_ln_top_p6p7_p5_lr3", "schedule", "norm_ln_top_p6p7_p5 with the neck's learning rate tripled "
     "(does more of what helped norm_ln_top_p6p7_p5_lr2 on dev help more?)",
     {**_LN_P5, "LR_FACTOR": "3.0"}),
    ("norm_ln_top_p6p7_p5_dense_p5", "conv", "norm_ln_top_p6p7_p5 with a dense 3x3 conv in the cells' P5 "
     "nodes (R-CNN's RPN finds large objects with its 128 px anchors at P5, which a separable conv makes; "
     "RetinaNet's large objects came back with dense convs making its P6/P7)",
     {**_LN_P5, "DENSE_CONV_LEVELS": "[5]"}),
    ("norm_ln_top_p6p7_p5_dense_p4p5", "conv", "norm_ln_top_p6p7_p5 with dense 3x3 convs in the cells' P4 "
     "and P5 nodes (more of the same; GFLOPs still below the FPN's)",
     {**_LN_P5, "DENSE_CONV_LEVELS": "[4, 5]"}),
    ("norm_ln_top_p6p7_p5_fusion_lr10", "fusion", "norm_ln_top_p6p7_p5 with the fusion weights at 10x the "
     "neck's learning rate (MODEL.BIFPN.FUSION_LR_FACTOR 10: at 1x they end a 400-iteration run within "
     "0.1-0.2 of their equal initial split, so every node averages its inputs)",
     {**_LN_P5, "FUSION_LR_FACTOR": "10.0"}),
    ("norm_ln_top_p6p7_p5_residual_scale0.1", "residual", "norm_ln_top_p6p7_p5 with the residual cells "
     "starting at a tenth of their change (output norm scales 0.1, not 0): from 0 the cells after the first "
     "learn nothing in a 400-iteration run (their fusion weights do not move)",
     {**_LN_P5, "RESIDUAL_SCALE": "0.1"}),
    ("norm_ln_top_p6p7_p5_cells1", "depth", "norm_ln_top_p6p7_p5 with one cell, not three: in a "
     "400-iteration run the later cells' fusion weights do not move from their equal split, even with their "
     "output norms started at 0.1; is the BiFPN trained here its first cell?",
     {**_LN_P5, "NUM_CELLS": "1"}),
    ("norm_ln_top_p6p7_p5_cells1_w152", "width", "norm_ln_top_p6p7_p5_cells1 152 channels wide, not 128 "
     "(the neck and the heads that read it): one cell spends fewer GFLOPs than the FPN, width spends them "
     "back (Faster R-CNN: 6.94 against the FPN's 7.19)",
     {**_LN_P5, "NUM_CELLS": "1", "OUT_CHANNELS": "152"}),
    ("norm_ln_top_p6p7_p5_cells1_w144", "width", "norm_ln_top_p6p7_p5_cells1 144 channels wide (Mask R-CNN: "
     "14.15 against the FPN's 14.30 GFLOPs; at 152 its mask head would take more than the FPN's)",
     {**_LN_P5, "NUM_CELLS": "1", "OUT_CHANNELS": "144"}),
    ("norm_ln_top_p6p7_p5_cells1_lr2", "schedule", "norm_ln_top_p6p7_p5_cells1 with the neck's learning rate "
     "doubled (on three cells it brought the RPN's proposals on large objects back, but its seeds spread "
     "widely: does one cell keep the first and lose the second?)",
     {**_LN_P5, "NUM_CELLS": "1", "LR_FACTOR": "2.0"}),
]
# (name, group, what it tests, changes to the pair's recipe, RECIPES_VARIED)
_RECIPE_ARMS = [
    ("recipe_neck_warmup0", "schedule", "the pair's shipped recipe with the neck at its full learning rate "
     "from the first iteration while the rest warms up over SOLVER.WARMUP_ITERS (MODEL.BIFPN.WARMUP_ITERS "
     "0): in these short runs the later cells do not train; is the neck short of updates?",
     {"WARMUP_ITERS": "0"}),
    ("recipe_neck_warmup200", "schedule", "the pair's shipped recipe with the neck warming up over 200 "
     "iterations, 4x the rest's 50 (MODEL.BIFPN.WARMUP_ITERS 200; a new neck on a trained backbone is often "
     "started so, here everything starts from scratch)", {"WARMUP_ITERS": "200"}),
    ("recipe_fusion_input2", "fusion", "the pair's shipped recipe with each node's edge from the cell's "
     "input at its level starting at twice the weight of its other edges (MODEL.BIFPN.FUSION_INPUT_WEIGHT "
     "2): at 1x the fusion weights end these runs near the split they start at, and at 10x the first cell's "
     "P2 and P3 nodes moved toward that edge", {"FUSION_INPUT_WEIGHT": "2.0"}),
    ("recipe_neck_warmup200_fusion_input2", "fusion", "recipe_neck_warmup200 and recipe_fusion_input2 "
     "together (semantic FPN: each was about half a point ahead of the recipe on dev; do they add up?)",
     {"WARMUP_ITERS": "200", "FUSION_INPUT_WEIGHT": "2.0"}),
]


def _pair_arms(pair: Pair) -> List[Arm]:
    arms = [Arm("fpn", "reference", "Detectron2's FPN (sum fusion, GN, width 128)", pair.fpn_config,
                pair=pair.name)]
    for name, group, question, changes in _PAIR_ARMS:
        if pair.name == "semantic_fpn" and "TOP_BLOCK" in changes:
            continue  # P2-P5: no level above the last input, no top block
        if pair.name == "retinanet" and name == "top_maxpool":
            continue  # P6 and P7: more levels than a max-pool of P5 makes
        if pair.name == "retinanet" and name == "shipped":
            continue  # RetinaNet shipped the candidate before (it ships norm_ln_top_p6p7_p5 now)
        overrides = _changed(BIFPN_AFTER, changes)
        arms.append(Arm(name, group, question, pair.bifpn_config, overrides, pair=pair.name))
    for name, group, question, changes in _RECIPE_ARMS:
        overrides = _changed(RECIPES_VARIED[pair.name], changes)
        arms.append(Arm(name, group, question, pair.bifpn_config, overrides, pair=pair.name))
    return arms


_PAIRED = [arm for pair in PAIRS.values() for arm in _pair_arms(pair)]
# The first study: RetinaNet only, chosen on the reporting split (kept to reproduce it).
FIRST_STUDY = "first study"
_FIRST = [
    Arm(a.name, FIRST_STUDY, a.question, a.config, a.overrides, a.iters_factor, a.eval_points, "retinanet_v1")
    for a in [_FPN, _AFTER] + _BIFPN + [_longer(arm) for arm in (_FPN, _BIFPN[0], _AFTER)]
]
PAIRS["retinanet_v1"] = PAIRS["retinanet"]
# Order = training order: the references of every pair first, then "shipped", then the
# other questions, so that a study cut short still compares every pair.
ARMS: List[Arm] = (
    [a for a in _PAIRED if a.group == "reference" and a.name != "shipped"]
    + [a for a in _PAIRED if a.name == "shipped"]
    + [a for a in _PAIRED if a.group != "reference"]
    + _FIRST
)
GROUPS = sorted({arm.group for arm in ARMS})


def arm_runs(
    arms: Sequence[Arm], seeds: Sequence[int], output_dir: Path, base_opts: Sequence[str], schedule
) -> List[Tuple[Arm, Run]]:
    """One :class:`Run` per arm and seed, in ``output_dir/<pair>/<arm>/seed<k>``.
    ``schedule(arm)`` gives the overrides of the arm's training length (and evaluation period)."""
    return [
        (
            arm,
            Run(
                arm.key,
                arm.config,
                output_dir / arm.pair / arm.name / f"seed{seed}",
                tuple(base_opts) + tuple(arm.opts()) + tuple(schedule(arm)),
                seed,
                primary=PAIRS[arm.pair].primary,
                dataset=PAIRS[arm.pair].test_datasets()[0],  # dev: where the study chooses
            ),
        )
        for arm in arms
        for seed in seeds
    ]


# Short names of the evaluation splits, for columns.
SPLIT_COLUMNS = {DEV: "dev", VAL: "val", TRANSFER[0]: "transfer_large", TRANSFER[1]: "transfer_small"}
# The size metric shown for detectors (the BiFPN once trailed the FPN there).
_LARGE = {"bbox/AP": "bbox/APl", "segm/AP": "segm/APl"}


def _metric_of_seeds(runs: Sequence[Run], metric: str, dataset: str) -> List[float]:
    return [run.value(metric, dataset) for run in runs]


def _per_seed(values: Sequence[float]) -> str:
    """``values`` of the seeds as the tables show them: "58.3 / 60.0"."""
    return " / ".join(f"{v:.1f}" for v in values)


def summarize_arms(
    results: Sequence[Tuple[Arm, Run]], costs: Dict[str, Dict[str, float]]
) -> List[Dict[str, object]]:
    """One row per arm, in the order of ``results``: its pair's primary metric (mean, sample
    sd and every seed) on each evaluation split, the size metric (AP_large for detectors)
    on each split, cost (``costs[key]``: GFLOPs, parameters), seconds per iteration, and the
    differences to the pair's ``fpn`` arm and whether the arm wins (:func:`compare_to_fpn`)."""
    groups: Dict[str, List[Run]] = {}
    arms: Dict[str, Arm] = {}
    for arm, run in results:
        groups.setdefault(arm.key, []).append(run)
        arms[arm.key] = arm
    rows: List[Dict[str, object]] = []
    for key, runs in groups.items():
        arm = arms[key]
        pair = PAIRS[arm.pair]
        suffix = pair.task_suffix
        row: Dict[str, object] = {
            "pair": arm.pair, "arm": arm.name, "group": arm.group, "metric": pair.primary,
            "seeds": " ".join(str(r.seed) for r in runs),
        }
        for dataset, column in SPLIT_COLUMNS.items():
            values = _metric_of_seeds(runs, pair.primary, dataset + suffix)
            row[column], row[f"{column} sd"] = mean_and_sd(values)
            row[f"{column} per seed"] = _per_seed(values)
        large = _LARGE.get(pair.primary)
        if large:  # the size metric on every split: one bucket of few objects is noisy
            for dataset, column in SPLIT_COLUMNS.items():
                values = _metric_of_seeds(runs, large, dataset)
                row[f"{column} large"] = mean_and_sd(values)[0]
                row[f"{column} large per seed"] = _per_seed(values)
        row.update(costs.get(key, {}))
        row["s/iter"] = mean_and_sd([r.sec_per_iter for r in runs])[0]
        row["what it tests"] = arm.question
        rows.append(row)
    return compare_to_fpn(rows)


def compare_to_fpn(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Add to each row its differences to its pair's ``fpn`` row (NaN without one): of the
    primary metric on each split, of AP_large on each split where the rows have it, and
    whether the arm *wins*: at least 2 points over the FPN on ``val`` and on every transfer
    set, at no more GFLOPs, and no worse on large objects on ``val``. ``dev`` is where
    choices are made; it does not decide a win. Returns ``rows``, changed in place."""
    fpn = {row["pair"]: row for row in rows if row["arm"] == "fpn"}
    for row in rows:
        reference = fpn.get(row["pair"], {})
        for column in SPLIT_COLUMNS.values():
            row[f"{column} - fpn"] = row[column] - reference.get(column, math.nan)
        large = f"{SPLIT_COLUMNS[VAL]} large" in row
        if large:
            for column in SPLIT_COLUMNS.values():
                difference = row[f"{column} large"] - reference.get(f"{column} large", math.nan)
                row[f"{column} large - fpn"] = difference
            row["large - fpn per split"] = " / ".join(
                f"{row[f'{column} large - fpn']:+.1f}" for column in SPLIT_COLUMNS.values())
        if row["arm"] != "fpn" and reference:  # no FPN in the table: no verdict
            margins = [row[f"{SPLIT_COLUMNS[d]} - fpn"] for d in (VAL,) + TRANSFER]
            wins = all(m >= 2.0 for m in margins) and row.get("GFLOPs", math.inf) <= reference.get(
                "GFLOPs", math.nan)
            wins = wins and (not large or row["val large - fpn"] >= 0)
            row["wins"] = "yes" if wins else "no"
    return rows


def _pooled(groups: Sequence[Tuple[int, float, float]]) -> Tuple[float, float]:
    """Mean and sample sd of the union of groups of values, each given as (count, mean,
    sample sd; NaN for a single value): exact, as if computed from every value. Groups
    without a value (count 0 or a NaN mean) are left out, as :func:`mean_and_sd` leaves out
    NaN values; NaN when no group is left."""
    groups = [(n, m, sd) for n, m, sd in groups if n > 0 and not math.isnan(m)]
    if not groups:
        return math.nan, math.nan
    count = sum(n for n, _, _ in groups)
    mean = sum(n * m for n, m, _ in groups) / count
    squares = sum((n - 1) * (sd * sd if n > 1 else 0.0) + n * (m - mean) ** 2 for n, m, sd in groups)
    return mean, math.sqrt(squares / (count - 1)) if count > 1 else math.nan


def _mean_over_seeds(parts: Sequence[Dict[str, str]], counts: Sequence[int], key: str) -> float:
    """The mean of column ``key`` over every seed of the table rows ``parts``, each row's
    mean weighted by its number of seeds (``counts``)."""
    return _pooled([(n, float(part[key]), math.nan) for n, part in zip(counts, parts)])[0]


def pool_studies(tables: Sequence[Sequence[Dict[str, str]]]) -> List[Dict[str, object]]:
    """The study's rows over the seeds of several studies of the same arms (each table:
    the rows of one ``neck_study.csv``, as read by :class:`csv.DictReader`), e.g. seeds 0 1
    trained on one machine and seeds 2 3 on another: per arm, the exact mean and sd over
    all its seeds on each split, the mean AP_large over all its seeds, and the differences
    to the pooled FPN (:func:`compare_to_fpn`). Rows in the order they first appear.

    Raises ``ValueError`` when one arm has a seed in two tables or different GFLOPs (then
    the tables do not study the same arm)."""
    arms: Dict[Tuple[str, str], List[Dict[str, str]]] = {}
    for table in tables:
        for row in table:
            arms.setdefault((row["pair"], row["arm"]), []).append(row)
    pooled: List[Dict[str, object]] = []
    for (pair, arm), parts in arms.items():
        seeds = [part["seeds"].split() for part in parts]
        flat = [seed for group in seeds for seed in group]
        if len(set(flat)) < len(flat):
            raise ValueError(
                f"{pair}/{arm}: seeds {' '.join(flat)} repeat across the tables; pool disjoint seeds")
        costs = {part["GFLOPs"] for part in parts}
        if len({round(float(c), 6) for c in costs}) > 1:
            raise ValueError(
                f"{pair}/{arm}: GFLOPs differ across the tables ({sorted(costs)}): not the same arm")
        counts = [len(group) for group in seeds]
        row: Dict[str, object] = {key: parts[0][key] for key in ("pair", "arm", "group", "metric")}
        row["seeds"] = " ".join(flat)
        for column in SPLIT_COLUMNS.values():
            values = [[v for v in p[f"{column} per seed"].split(" / ") if v != "nan"] for p in parts]
            row[column], row[f"{column} sd"] = _pooled(  # a seed without a value (NaN) does not count
                [(len(v), float(p[column]), float(p[f"{column} sd"])) for v, p in zip(values, parts)])
            row[f"{column} per seed"] = " / ".join(p[f"{column} per seed"] for p in parts)
            if parts[0].get(f"{column} large"):
                row[f"{column} large"] = _mean_over_seeds(parts, counts, f"{column} large")
                if all(p.get(f"{column} large per seed") for p in parts):  # not in tables before it was
                    row[f"{column} large per seed"] = " / ".join(p[f"{column} large per seed"] for p in parts)
        for key in ("GFLOPs", "params_M", "neck_params_M"):
            row[key] = float(parts[0][key])
        row["s/iter"] = _mean_over_seeds(parts, counts, "s/iter")
        row["what it tests"] = parts[0]["what it tests"]
        pooled.append(row)
    return compare_to_fpn(pooled)


# Columns of the study table, in order (the CSV has them all, with full precision).
COLUMNS = [
    "pair",
    "arm",
    "seeds",
    "dev",
    "val",
    "val sd",
    "val per seed",
    "val - fpn",
    "transfer_large - fpn",
    "transfer_small - fpn",
    "val large - fpn",
    "large - fpn per split",
    "GFLOPs",
    "neck_params_M",
    "wins",
    "what it tests",
]
CSV_COLUMNS = (
    ["pair", "arm", "group", "metric", "seeds"]
    + [f"{c}{s}" for c in SPLIT_COLUMNS.values() for s in ("", " sd", " per seed", " - fpn")]
    + [f"{c} large{s}" for c in SPLIT_COLUMNS.values() for s in ("", " per seed", " - fpn")]
    + ["GFLOPs", "params_M", "neck_params_M", "s/iter", "wins"]
    + ["what it tests"]
)


def fusion_speed(
    repeats: int = 50, size: Tuple[int, int] = (40, 40), channels: int = 128
) -> Dict[str, float]:
    """Milliseconds of one fusion of 3 inputs, forward and backward, at P3 of the main job
    (batch 4): fast normalized against softmax, scalar and channel-wise (and sum for
    scale), medians of interleaved runs in this process."""
    import torch

    from bifpn_d2.layers import WeightedFusion

    from .measure import interleaved_times, median

    inputs = [torch.randn(4, channels, *size, requires_grad=True) for _ in range(3)]
    methods = ("fast_normalized", "softmax", "channel_fast_normalized", "channel_softmax", "sum")
    fusions = {m: WeightedFusion(3, m, channels=channels) for m in methods}

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
        groups.setdefault(arm.key, []).append(run)
    text = f"{title}\n\n"
    for pair in dict.fromkeys(str(r["pair"]) for r in rows):
        shown = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                 for r in rows if r["pair"] == pair]
        text += f"### {pair} ({PAIRS[pair].primary})\n\n" + markdown_table(shown, COLUMNS, digits=3) + "\n"
    speeds = ", ".join(f"{m} {ms:.2f} ms" for m, ms in speed.items())
    if speed:
        text += f"One 3-input fusion, forward + backward, 4 x 128 x 40 x 40 (median): {speeds}\n"
    paths = [
        write_text(text, str(output_dir / "neck_study.md")),
        write_csv(rows, str(output_dir / "neck_study.csv"), CSV_COLUMNS),
        plot_pairs(rows, str(output_dir / "neck_study.png"), title, list(SPLIT_COLUMNS.values())),
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
    fusion_runs = {}  # EfficientDet's Figure 6: fast normalized against softmax
    for arm, run in results:
        if arm.pair == "retinanet_v1" and arm.name in ("bifpn_before", "fusion_softmax") and run.scalars:
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
