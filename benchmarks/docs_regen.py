"""Every generated file under ``docs/`` that a CPU can measure, with the command that
makes it: what ``tools/regenerate_docs.py`` runs.

A step runs one tool into its own folder under ``output/docs``, then copies the files it
names into ``docs/``; a step that fails copies nothing, so the docs keep their last
measured files. Steps run in this order (later ones read the weights that earlier ones
train). Pages quote the figures of these files in their prose: after a run that changed
figures, ``git diff docs`` shows which sentences to reread.

Not here: the GPU races (``docs/efficientdet_race_cuda.md``) and the first neck study
(``docs/neck_study_first*``, 26 arms x 3 seeds, measured on a GPU host).
"""
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

__all__ = ["STEPS", "Step", "run_steps", "step_command"]

PY = sys.executable
STUDY = "output/docs/neck_study"
MAIN_JOB = "output/docs/main_job"  # trains the weights that fusion_weights and demo read
BIFPN_WEIGHTS = f"{MAIN_JOB}/bifpn/seed0/model_final.pth"  # the shipped RetinaNet BiFPN, seed 0
EFFDET_TRAINING = "output/docs/efficientdet_training"
VAL_IMAGE = "{val_images}/000000.jpg"  # the first image of synthetic_shapes_val


@dataclass(frozen=True)
class Step:
    """``command`` (run from the repository root; ``{docs}`` and ``{val_images}`` stand for
    the docs folder and the image folder of ``synthetic_shapes_val``) writes into ``out``; ``copies`` maps
    a file there to its name in the docs folder (an empty map: the command writes there
    itself). ``minutes``: (low, high) on a 2-core CPU."""

    name: str
    command: List[str]
    out: str
    copies: Dict[str, str] = field(default_factory=dict)
    minutes: Sequence[int] = (1, 3)


def _tool(name: str, *args: str) -> List[str]:
    return [PY, f"tools/{name}.py", *args]


def _outputs(prefix: str, target: str, *suffixes: str) -> Dict[str, str]:
    """``{prefix.md: target.md, ...}`` for each suffix."""
    return {f"{prefix}.{suffix}": f"{target}.{suffix}" for suffix in suffixes}


def _study(name: str, arms: Sequence[str], seeds: Sequence[str], out: str, minutes: Sequence[int]) -> Step:
    """A neck-study run of ``arms`` x ``seeds`` (two at a time) into ``out``, whose table,
    CSV and plot become ``docs/<name>.*``."""
    command = _tool("neck_study", "--arms", *arms, "--seeds", *seeds, "--jobs", "2", "--output-dir", out)
    return Step(name, command, out, _outputs("neck_study", name, "md", "csv", "png"), minutes)


def _pool(name: str, tables: Sequence[str], arms: Sequence[str] = ("all",)) -> Step:
    """The study's table over the seeds of the docs' study ``tables`` (names of earlier
    steps), rows of ``arms`` only: ``docs/<name>.*``."""
    out = f"output/docs/{name}"
    csvs = [f"{{docs}}/{table}.csv" for table in tables]
    command = _tool("neck_study", "--pool", *csvs, "--arms", *arms, "--output-dir", out)
    return Step(name, command, out, _outputs("neck_study", name, "md", "csv", "png"))


def _in_halves(name: str, arms: Sequence[str], out: str, minutes: Sequence[int]) -> List[Step]:
    """A study trained in two halves into ``out``: seeds 0 1 (the screen; ``docs/<name>.*``),
    seeds 2 3 (``<name>_seeds23.*``), and their 4-seed table (``<name>_4seeds.*``)."""
    halves = [_study(f"{name}{part}", arms, seeds, out, minutes) for part, seeds in SEED_HALVES]
    return halves + [_pool(f"{name}_4seeds", [f"{name}{part}" for part, _ in SEED_HALVES], arms)]


def _run_args(arms: Sequence[str], study: str) -> List[str]:
    """``--run NAME-sSEED=DIR`` for seeds 0 1 of each of ``arms`` trained in ``study``."""
    return [item for arm in arms for seed in (0, 1)
            for item in ("--run", f"{arm.split('/')[1]}-s{seed}={study}/{arm}/seed{seed}")]


def _sizes(name: str, arms: Sequence[str], study: str, threads: str) -> Step:
    """The size diagnosis, on dev, of seeds 0 1 of ``arms`` trained in ``study``: its table
    and CSV become ``docs/<name>.*``."""
    out = f"output/docs/{name}"
    command = _tool("diagnose_object_sizes", "--dataset", "synthetic_shapes_dev", "--threads", threads,
                    *_run_args(arms, study), "--output-dir", out)
    return Step(name, command, out, _outputs("object_sizes", name, "md", "csv"), (5, 15))


def _fusion_weights(name: str, arm: str, study: str, seed: int = 0) -> Step:
    """The fusion weights of ``seed`` of ``arm`` trained in ``study``: ``docs/<name>.{png,csv}``."""
    out = f"output/docs/{name}"
    run = f"{study}/{arm}/seed{seed}"
    command = _tool("plot_fusion_weights", "--config-file", f"{run}/config.yaml", "--weights",
                    f"{run}/model_final.pth", "--output-dir", out)
    return Step(name, command, out, _outputs("fusion_weights", name, "png", "csv"))


def _false_positives(name: str, arms: Sequence[str], study: str) -> Step:
    """The confident detections by kind and box size, on dev, of seeds 0 1 of ``arms``
    trained in ``study`` (read from their saved detections): ``docs/<name>.*``."""
    out = f"output/docs/{name}"
    command = _tool("diagnose_false_positives", "--dataset", "synthetic_shapes_dev", *_run_args(arms, study),
                    "--output-dir", out)
    return Step(name, command, out, _outputs("false_positives", name, "md", "csv"), (1, 2))


RETINANET_BIFPN = "configs/synthetic/RetinaNet-R18-BiFPN.yaml"
SYNTHETIC_PAIR_CONFIGS = [f"configs/synthetic/{model}-R18-{neck}.yaml"
                          for model in ("RetinaNet", "FasterRCNN", "MaskRCNN", "SemanticFPN")
                          for neck in ("FPN", "BiFPN")]
STUDY_ARMS = ["retinanet/fpn", "retinanet/candidate", "faster_rcnn/fpn", "faster_rcnn/candidate",
              "retinanet/residual_scale1", "retinanet/residual_scale0.1", "retinanet/channel_fast_normalized",
              "retinanet/channel_softmax"]
# RetinaNet's large objects: the arms of the norm and of the top block (read by the size diagnosis)
LARGE_STUDY = "output/docs/study_retinanet_large"
LARGE_ARMS = ["retinanet/fpn", "retinanet/candidate", "retinanet/top_p6p7_p5", "retinanet/norm_ln",
              "retinanet/norm_ln_top_p6p7_p5"]
# The FPN, the recipe shipped before and the one chosen, with seeds 2 3 beside 0 1: the
# 4-seed steps train nothing (a finished run is reused) and tabulate all 4 seeds
LARGE_PAIR_ARMS = ["retinanet/fpn", "retinanet/candidate", "retinanet/norm_ln_top_p6p7_p5"]
# RetinaNet's P6/P7 from C5 joined after the cells (the FPN's), beside the FPN and the recipe
# shipped before it (P6/P7 from the cells' P5)
TOP_C5_STUDY = "output/docs/study_retinanet_top_c5_after"
TOP_C5_ARMS = ["retinanet/fpn", "retinanet/norm_ln_top_p6p7_p5", "retinanet/norm_ln_top_p6p7_c5_after"]
# The FPN, the shipped recipe, and the recipe with one cell (Faster R-CNN's and semantic FPN's choice)
RETINANET_PAIR = ["retinanet/fpn", "retinanet/norm_ln_top_p6p7_c5_after"]
RETINANET_CELLS1_ARMS = RETINANET_PAIR + ["retinanet/norm_ln_top_p6p7_c5_after_cells1"]
# The same three on the Faster R-CNN pair
FRCNN_LARGE_STUDY = "output/docs/study_frcnn_large"
FRCNN_LARGE_ARMS = ["faster_rcnn/fpn", "faster_rcnn/candidate", "faster_rcnn/norm_ln_top_p6p7_p5"]
# Faster R-CNN's FPN and shipped recipe, beside which the arms below were trained, all in
# one runs directory
FRCNN_PAIR = ["faster_rcnn/fpn", "faster_rcnn/norm_ln_top_p6p7_p5"]
# The recipe with the neck's learning rate raised; the Faster R-CNN diagnoses read these
# four arms' runs
FRCNN_LR_ARMS = FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_p5_lr2", "faster_rcnn/norm_ln_top_p6p7_p5_lr3"]
# RetinaNet's P6 from C5 joined after the cells, asked of Faster R-CNN
FRCNN_C5_ARMS = FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_c5_after"]
# Dense 3x3 convs in the cells' coarse nodes (P5; P4 and P5), asked of Faster R-CNN
FRCNN_DENSE_ARMS = FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_p5_dense_p5",
                                 "faster_rcnn/norm_ln_top_p6p7_p5_dense_p4p5"]
# The recipe with its later residual cells started at a tenth of their change
FRCNN_SCALE_ARMS = FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_p5_residual_scale0.1"]
# The recipe with one cell, not three
FRCNN_CELLS1_ARMS = FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_p5_cells1"]
# The shipped one cell, wider (152 channels) or with the neck's learning rate doubled
FRCNN_CELLS1_VARIANT_ARMS = [f"faster_rcnn/norm_ln_top_p6p7_p5_cells1{variant}"
                             for variant in ("", "_w152", "_lr2")]
FRCNN_W152_ARMS = FRCNN_CELLS1_ARMS + ["faster_rcnn/norm_ln_top_p6p7_p5_cells1_w152"]
# The shipped one cell at 152 channels with the neck's own warmup: none, or 4x the rest's
FRCNN_WARMUP_ARMS = ["faster_rcnn/norm_ln_top_p6p7_p5_cells1_w152", "faster_rcnn/recipe_neck_warmup0",
                     "faster_rcnn/recipe_neck_warmup200"]
# ... and with each node's own-level input edge starting at twice the others' fusion weight
FRCNN_FUSION_ARMS = FRCNN_WARMUP_ARMS[:1] + ["faster_rcnn/recipe_fusion_input2"]
FRCNN_FUSION_VS_FPN = ["faster_rcnn/fpn"] + FRCNN_FUSION_ARMS
# Mask R-CNN and semantic FPN: the FPN, the recipe they ship (residual cells, GN, P6 from C5)
# and the LN recipe of RetinaNet and Faster R-CNN (semantic FPN has no top block: LN alone)
SEGMENTATION_LN_STUDY = "output/docs/study_ln_segmentation"
SEGMENTATION_LN_ARMS = ["mask_rcnn/fpn", "mask_rcnn/candidate", "mask_rcnn/norm_ln_top_p6p7_p5",
                        "semantic_fpn/fpn", "semantic_fpn/candidate", "semantic_fpn/norm_ln"]
# Mask R-CNN's FPN and shipped LN recipe over 4 seeds (seeds 2 3 added to the runs above)
MASK_LN_ARMS = ["mask_rcnn/fpn", "mask_rcnn/norm_ln_top_p6p7_p5"]
# Faster R-CNN's one cell, asked of semantic FPN beside its FPN and candidate
SEMANTIC_CELLS1_ARMS = ["semantic_fpn/fpn", "semantic_fpn/candidate", "semantic_fpn/cells1"]
# The shipped recipe with the neck's own warmup: none, or 4x the rest's
MASK_WARMUP_ARMS = ["mask_rcnn/recipe_neck_warmup0", "mask_rcnn/recipe_neck_warmup200"]
# Faster R-CNN's one cell, asked of Mask R-CNN
MASK_CELLS1_ARMS = MASK_LN_ARMS + ["mask_rcnn/norm_ln_top_p6p7_p5_cells1"]
# Semantic FPN: the BiFPN arms beyond norm (its pyramid stops at P5: no top block arms),
# beside the FPN and the shipped candidate, in the same runs directory
SEMANTIC_ARMS = [f"semantic_fpn/{arm}" for arm in ("fpn", "candidate", "plain", "residual_scale1", "cells6",
                                                    "channel_fast_normalized", "neck_lr2")]
# Semantic FPN's shipped one cell at 192 channels with the neck's own warmup, beside the FPN
SEMANTIC_WARMUP_ARMS = ["semantic_fpn/fpn", "semantic_fpn/cells1_w192", "semantic_fpn/recipe_neck_warmup0",
                        "semantic_fpn/recipe_neck_warmup200"]
SEMANTIC_FUSION_ARMS = SEMANTIC_WARMUP_ARMS[:2] + ["semantic_fpn/recipe_fusion_input2"]
# Semantic FPN's two levers together, beside the FPN and the shipped warmup
SEMANTIC_BOTH_ARMS = ["semantic_fpn/fpn", "semantic_fpn/recipe_neck_warmup200",
                      "semantic_fpn/recipe_neck_warmup200_fusion_input2"]
MASK_FUSION_ARMS = ["mask_rcnn/recipe_fusion_input2"]
# A study trained in two halves: seeds 0 1 (the screen; docs/<name>.*), then 2 3 (<name>_seeds23)
SEED_HALVES = (("", ["0", "1"]), ("_seeds23", ["2", "3"]))
CHECKPOINTING = "output/docs/checkpointing"
LITE = ["Lite0", "Lite1", "Lite2", "Lite3", "Lite4"]

STEPS: List[Step] = [
    Step("synthetic_shapes",
         _tool("visualize_data", "--config-file", RETINANET_BIFPN, "--source", "annotation",
               "--num-images", "8", "--output-dir", "output/docs/synthetic_shapes",
               "--mosaic", "{docs}/synthetic_shapes.jpg"),
         "output/docs/synthetic_shapes"),
    Step("efficientdet_size",
         _tool("efficientdet_race", "size", "--output-dir", "output/docs/efficientdet_size"),
         "output/docs/efficientdet_size", _outputs("size", "efficientdet_size", "md", "csv"), (5, 15)),
    Step("efficientdet_lite_size",
         _tool("efficientdet_race", "size", "--variants", *LITE,
               "--output-dir", "output/docs/efficientdet_lite_size"),
         "output/docs/efficientdet_lite_size", _outputs("size", "efficientdet_lite_size", "md", "csv"),
         (3, 10)),
    Step("main_job", _tool("main_job", "--output-dir", MAIN_JOB), MAIN_JOB,
         _outputs("results", "main_job_results", "md", "png"), (20, 60)),
    Step("efficientdet_training",
         _tool("compare_effdet_training", "--seeds", "0", "1", "--output-dir", EFFDET_TRAINING),
         EFFDET_TRAINING,
         _outputs("results", "efficientdet_training", "md", "csv", "png"), (15, 45)),
    Step("efficientdet_training_2000",
         _tool("compare_effdet_training", "--seeds", "0", "1", "2", "--iters", "2000",
               "--output-dir", EFFDET_TRAINING + "_2000"),
         EFFDET_TRAINING + "_2000",
         _outputs("results", "efficientdet_training_2000", "md", "csv", "png"), (90, 300)),
    Step("neck_study", _tool("neck_study", "--arms", *STUDY_ARMS, "--seeds", "0", "1", "--output-dir", STUDY),
         STUDY, _outputs("neck_study", "neck_study", "md", "csv", "png"), (120, 240)),
    Step("neck_study_references",
         _tool("neck_study", "--arms", "reference", "--seeds", "0", "1", "--output-dir", STUDY), STUDY,
         _outputs("neck_study", "neck_study_references", "md", "csv", "png"), (60, 180)),
    Step("neck_study_retinanet_lr2_seeds23",
         _tool("neck_study", "--arms", "retinanet/fpn", "retinanet/candidate", "retinanet/neck_lr2",
               "--seeds", "2", "3", "--jobs", "2", "--output-dir", "output/docs/study_lr2_seeds23"),
         "output/docs/study_lr2_seeds23",
         _outputs("neck_study", "neck_study_retinanet_lr2_seeds23", "md", "csv", "png"), (25, 75)),
    Step("neck_study_faster_rcnn_lr2",
         _tool("neck_study", "--arms", "faster_rcnn/fpn", "faster_rcnn/candidate", "faster_rcnn/neck_lr2",
               "--seeds", "0", "1", "--jobs", "2", "--output-dir", "output/docs/study_frcnn_lr2"),
         "output/docs/study_frcnn_lr2",
         _outputs("neck_study", "neck_study_faster_rcnn_lr2", "md", "csv", "png"), (45, 120)),
    Step("neck_study_faster_rcnn_arms",
         _tool("neck_study", "--arms", "faster_rcnn/fpn", "faster_rcnn/candidate", "faster_rcnn/plain",
               "faster_rcnn/top_efficientdet", "faster_rcnn/cells6", "faster_rcnn/norm_bn_m0.1",
               "faster_rcnn/neck_lr2_top_efficientdet", "faster_rcnn/top_maxpool", "--seeds", "0", "1",
               "--jobs", "2", "--output-dir", "output/docs/study_frcnn_arms"),
         "output/docs/study_frcnn_arms",
         _outputs("neck_study", "neck_study_faster_rcnn_arms", "md", "csv", "png"), (120, 320)),
    _study("neck_study_retinanet_large", LARGE_ARMS, ["0", "1"], LARGE_STUDY, (45, 120)),
    _study("neck_study_retinanet_large_seeds23", LARGE_PAIR_ARMS, ["2", "3"], LARGE_STUDY, (30, 90)),
    _study("neck_study_retinanet_large_4seeds", LARGE_PAIR_ARMS, ["0", "1", "2", "3"], LARGE_STUDY, (1, 3)),
    _study("neck_study_retinanet_top_c5_after", TOP_C5_ARMS, ["0", "1"], TOP_C5_STUDY, (25, 75)),
    _study("neck_study_retinanet_top_c5_after_seeds23", TOP_C5_ARMS, ["2", "3"], TOP_C5_STUDY, (25, 75)),
    _study("neck_study_retinanet_top_c5_after_4seeds", TOP_C5_ARMS, ["0", "1", "2", "3"], TOP_C5_STUDY,
           (1, 3)),
    _study("neck_study_faster_rcnn_large", FRCNN_LARGE_ARMS, ["0", "1"], FRCNN_LARGE_STUDY, (40, 110)),
    _study("neck_study_faster_rcnn_large_seeds23", FRCNN_LARGE_ARMS, ["2", "3"], FRCNN_LARGE_STUDY,
           (40, 110)),
    _study("neck_study_faster_rcnn_large_4seeds", FRCNN_LARGE_ARMS, ["0", "1", "2", "3"], FRCNN_LARGE_STUDY,
           (1, 3)),
    _sizes("object_sizes_retinanet", LARGE_ARMS, LARGE_STUDY, "1"),
    _sizes("object_sizes_retinanet_top_c5_after", TOP_C5_ARMS, TOP_C5_STUDY, "2"),
    _study("neck_study_faster_rcnn_neck_lr", FRCNN_LR_ARMS, ["0", "1"], FRCNN_LARGE_STUDY, (35, 90)),
    _sizes("object_sizes_faster_rcnn", FRCNN_LR_ARMS, FRCNN_LARGE_STUDY, "2"),
    _study("neck_study_faster_rcnn_top_c5_after", FRCNN_C5_ARMS, ["0", "1"], FRCNN_LARGE_STUDY, (20, 60)),
    _study("neck_study_faster_rcnn_top_c5_after_seeds23", FRCNN_C5_ARMS, ["2", "3"], FRCNN_LARGE_STUDY,
           (40, 110)),
    _study("neck_study_faster_rcnn_top_c5_after_4seeds", FRCNN_C5_ARMS, ["0", "1", "2", "3"],
           FRCNN_LARGE_STUDY, (1, 3)),
    _study("neck_study_faster_rcnn_neck_lr2_4seeds", FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_p5_lr2"],
           ["0", "1", "2", "3"], FRCNN_LARGE_STUDY, (20, 60)),
    _study("neck_study_faster_rcnn_dense", FRCNN_DENSE_ARMS, ["0", "1"], FRCNN_LARGE_STUDY, (40, 110)),
    _study("neck_study_faster_rcnn_dense_4seeds", FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_p5_dense_p4p5"],
           ["0", "1", "2", "3"], FRCNN_LARGE_STUDY, (20, 60)),
    _study("neck_study_faster_rcnn_fusion_lr10_4seeds",
           FRCNN_PAIR + ["faster_rcnn/norm_ln_top_p6p7_p5_fusion_lr10"], ["0", "1", "2", "3"],
           FRCNN_LARGE_STUDY, (40, 110)),
    _study("neck_study_segmentation_ln", SEGMENTATION_LN_ARMS, ["0", "1"], SEGMENTATION_LN_STUDY, (50, 150)),
    _study("neck_study_semantic_arms", SEMANTIC_ARMS, ["0", "1"], SEGMENTATION_LN_STUDY, (50, 150)),
    _study("neck_study_mask_rcnn_4seeds", MASK_LN_ARMS, ["0", "1", "2", "3"], SEGMENTATION_LN_STUDY,
           (40, 120)),
    _study("neck_study_mask_rcnn_lr2", MASK_LN_ARMS + ["mask_rcnn/norm_ln_top_p6p7_p5_lr2"], ["0", "1"],
           SEGMENTATION_LN_STUDY, (40, 120)),
    _study("neck_study_mask_rcnn_cells1", MASK_CELLS1_ARMS[-1:], ["0", "1", "2", "3"], SEGMENTATION_LN_STUDY,
           (40, 120)),
    # the FPN and the recipe: seeds 0-3 of the 4-seed table (the same runs)
    _pool("neck_study_mask_rcnn_cells1_4seeds",
          ["neck_study_mask_rcnn_4seeds", "neck_study_mask_rcnn_cells1"], MASK_CELLS1_ARMS),
    _study("neck_study_mask_rcnn_w144", ["mask_rcnn/norm_ln_top_p6p7_p5_cells1",
                                         "mask_rcnn/norm_ln_top_p6p7_p5_cells1_w144"], ["0", "1"],
           SEGMENTATION_LN_STUDY, (20, 60)),
    _study("neck_study_mask_rcnn_neck_warmup", MASK_WARMUP_ARMS, ["0", "1"], SEGMENTATION_LN_STUDY, (20, 60)),
    # beside the FPN's and the shipped recipe's seeds 0 1 from the lr2 table
    _pool("neck_study_mask_rcnn_neck_warmup_vs_fpn",
          ["neck_study_mask_rcnn_lr2", "neck_study_mask_rcnn_neck_warmup"], MASK_LN_ARMS + MASK_WARMUP_ARMS),
    *[_study(f"neck_study_mask_rcnn_fusion_input2{part}", MASK_FUSION_ARMS, seeds, SEGMENTATION_LN_STUDY,
             (20, 60)) for part, seeds in SEED_HALVES],
    # beside the FPN's and the recipe's seeds 0 1 (the screen), then 0-3 (the 4-seed table)
    _pool("neck_study_mask_rcnn_fusion_input2_vs_fpn",
          ["neck_study_mask_rcnn_lr2", "neck_study_mask_rcnn_fusion_input2"],
          MASK_LN_ARMS + MASK_FUSION_ARMS),
    _pool("neck_study_mask_rcnn_fusion_input2_4seeds",
          ["neck_study_mask_rcnn_4seeds", "neck_study_mask_rcnn_fusion_input2",
           "neck_study_mask_rcnn_fusion_input2_seeds23"], MASK_LN_ARMS + MASK_FUSION_ARMS),
    _study("neck_study_semantic_cells1", SEMANTIC_CELLS1_ARMS, ["0", "1", "2", "3"], SEGMENTATION_LN_STUDY,
           (40, 120)),
    # the FPN, the candidate and one cell: the runs of the step above
    _study("neck_study_semantic_w192", SEMANTIC_CELLS1_ARMS + ["semantic_fpn/cells1_w192"],
           ["0", "1", "2", "3"], SEGMENTATION_LN_STUDY, (15, 45)),
    _study("neck_study_semantic_w224",
           SEMANTIC_CELLS1_ARMS + ["semantic_fpn/cells1_w192", "semantic_fpn/cells1_w224"],
           ["0", "1", "2", "3"], SEGMENTATION_LN_STUDY, (15, 45)),
    *_in_halves("neck_study_semantic_neck_warmup", SEMANTIC_WARMUP_ARMS, SEGMENTATION_LN_STUDY, (15, 45)),
    *_in_halves("neck_study_semantic_fusion_input2", SEMANTIC_FUSION_ARMS, SEGMENTATION_LN_STUDY, (10, 30)),
    *_in_halves("neck_study_semantic_warmup200_fusion_input2", SEMANTIC_BOTH_ARMS, SEGMENTATION_LN_STUDY,
                (10, 30)),
    _study("neck_study_retinanet_cells1", RETINANET_CELLS1_ARMS[-1:], ["0", "1"], TOP_C5_STUDY, (10, 30)),
    # the FPN and the recipe: seeds 0 1 of their table (the same runs)
    _pool("neck_study_retinanet_cells1_seeds01",
          ["neck_study_retinanet_top_c5_after", "neck_study_retinanet_cells1"], RETINANET_CELLS1_ARMS),
    # the fusion start on the shipped recipe, beside the same FPN and recipe runs
    _study("neck_study_retinanet_fusion_input2", ["retinanet/recipe_fusion_input2"], ["0", "1"], TOP_C5_STUDY,
           (10, 30)),
    _pool("neck_study_retinanet_fusion_input2_seeds01",
          ["neck_study_retinanet_top_c5_after", "neck_study_retinanet_fusion_input2"],
          RETINANET_PAIR + ["retinanet/recipe_fusion_input2"]),
    _false_positives("false_positives_retinanet", LARGE_PAIR_ARMS, LARGE_STUDY),
    _false_positives("false_positives_faster_rcnn", FRCNN_LR_ARMS, FRCNN_LARGE_STUDY),
    Step("fusion_weights",
         _tool("plot_fusion_weights", "--config-file", RETINANET_BIFPN, "--weights", BIFPN_WEIGHTS,
               "--output-dir", "output/docs/fusion_weights"),
         "output/docs/fusion_weights", {"fusion_weights.png": "fusion_weights_retinanet.png"}),
    _study("neck_study_faster_rcnn_residual_scale0.1", FRCNN_SCALE_ARMS, ["0", "1"], FRCNN_LARGE_STUDY,
           (20, 60)),
    _study("neck_study_faster_rcnn_residual_scale0.1_seeds23", FRCNN_SCALE_ARMS, ["2", "3"],
           FRCNN_LARGE_STUDY, (40, 110)),
    _pool("neck_study_faster_rcnn_residual_scale0.1_4seeds",
          ["neck_study_faster_rcnn_residual_scale0.1", "neck_study_faster_rcnn_residual_scale0.1_seeds23"]),
    _study("neck_study_faster_rcnn_cells1_seeds23", FRCNN_CELLS1_ARMS, ["2", "3"], FRCNN_LARGE_STUDY,
           (10, 30)),
    _study("neck_study_faster_rcnn_cells1_seeds01", FRCNN_CELLS1_ARMS[-1:], ["0", "1"], FRCNN_LARGE_STUDY,
           (10, 30)),
    # seeds 0 1 of the FPN and the recipe from the residual_scale0.1 table (same runs)
    _pool("neck_study_faster_rcnn_cells1_4seeds",
          ["neck_study_faster_rcnn_residual_scale0.1", "neck_study_faster_rcnn_cells1_seeds01",
           "neck_study_faster_rcnn_cells1_seeds23"], FRCNN_CELLS1_ARMS),
    _study("neck_study_faster_rcnn_cells1_variants", FRCNN_CELLS1_VARIANT_ARMS, ["0", "1"], FRCNN_LARGE_STUDY,
           (20, 60)),
    _study("neck_study_faster_rcnn_w152_seeds23", FRCNN_W152_ARMS, ["2", "3"], FRCNN_LARGE_STUDY, (10, 30)),
    # seeds 0 1 of the FPN and the recipe from the residual_scale0.1 table, of one cell and
    # its 152-wide arm from the variants table
    _pool("neck_study_faster_rcnn_w152_4seeds",
          ["neck_study_faster_rcnn_residual_scale0.1", "neck_study_faster_rcnn_cells1_variants",
           "neck_study_faster_rcnn_w152_seeds23"], FRCNN_W152_ARMS),
    _study("neck_study_faster_rcnn_neck_warmup", FRCNN_WARMUP_ARMS, ["0", "1"], FRCNN_LARGE_STUDY, (15, 45)),
    _study("neck_study_faster_rcnn_fusion_input2", FRCNN_FUSION_ARMS, ["0", "1"], FRCNN_LARGE_STUDY,
           (10, 30)),
    _pool("neck_study_faster_rcnn_fusion_input2_vs_fpn",
          ["neck_study_faster_rcnn_residual_scale0.1", "neck_study_faster_rcnn_fusion_input2"],
          FRCNN_FUSION_VS_FPN),
    # seeds 2 3 with the FPN's (the runs of the w152_seeds23 step), then all 4 beside the FPN's
    # seeds 0 1 from the residual_scale0.1 table
    _study("neck_study_faster_rcnn_fusion_input2_seeds23", FRCNN_FUSION_VS_FPN,
           ["2", "3"], FRCNN_LARGE_STUDY, (10, 30)),
    _pool("neck_study_faster_rcnn_fusion_input2_4seeds",
          ["neck_study_faster_rcnn_residual_scale0.1", "neck_study_faster_rcnn_fusion_input2",
           "neck_study_faster_rcnn_fusion_input2_seeds23"], FRCNN_FUSION_VS_FPN),
    # beside the FPN's seeds 0 1 from the residual_scale0.1 table
    _pool("neck_study_faster_rcnn_neck_warmup_vs_fpn",
          ["neck_study_faster_rcnn_residual_scale0.1", "neck_study_faster_rcnn_neck_warmup"],
          ["faster_rcnn/fpn"] + FRCNN_WARMUP_ARMS),
    _fusion_weights("fusion_weights_faster_rcnn", "faster_rcnn/norm_ln_top_p6p7_p5", FRCNN_LARGE_STUDY),
    _fusion_weights("fusion_weights_faster_rcnn_fusion_lr10", "faster_rcnn/norm_ln_top_p6p7_p5_fusion_lr10",
                    FRCNN_LARGE_STUDY),
    _fusion_weights("fusion_weights_faster_rcnn_seed2", "faster_rcnn/norm_ln_top_p6p7_p5", FRCNN_LARGE_STUDY,
                    seed=2),
    _fusion_weights("fusion_weights_faster_rcnn_residual_scale0.1_seed2",
                    "faster_rcnn/norm_ln_top_p6p7_p5_residual_scale0.1", FRCNN_LARGE_STUDY, seed=2),
    Step("demo",
         _tool("demo", "--config-file", RETINANET_BIFPN, "--input", VAL_IMAGE,
               "--output", "{docs}/demo.png", "--confidence-threshold", "0.5",
               "--opts", "MODEL.WEIGHTS", BIFPN_WEIGHTS, "MODEL.DEVICE", "cpu"),
         "output/docs/demo"),
    Step("model_zoo",
         _tool("model_zoo_table", "--repeats", "3", "--warmup", "1", "--threads", "2",
               "--result", f"RetinaNet-R18-FPN={MAIN_JOB}/fpn/seed0",
               "--result", f"RetinaNet-R18-BiFPN={MAIN_JOB}/bifpn/seed0", "--output-dir", "output/docs/zoo"),
         "output/docs/zoo", {name: name for name in ("model_zoo.md", "model_zoo.csv", "ap_vs_gflops.png")},
         (15, 45)),
    # The synthetic pairs alone, more runs each: the switch's latency (in the table above
    # they are timed interleaved with 27 larger models, which slows them by up to ~55 %)
    Step("model_zoo_synthetic",
         _tool("model_zoo_table", "--configs", *SYNTHETIC_PAIR_CONFIGS, "--no-detectron2", "--repeats", "11",
               "--warmup", "2", "--threads", "2", "--output-dir", "output/docs/zoo_synthetic"),
         "output/docs/zoo_synthetic", {"model_zoo.md": "model_zoo_synthetic.md",
                                       "model_zoo.csv": "model_zoo_synthetic.csv"}),
    Step("efficientdet_race_cpu",
         _tool("efficientdet_race", "race", "--variants", "D0", "--batch-sizes", "1", "8",
               "--threads", "1", "2", "--repeats", "5", "--warmup", "2",
               "--output-dir", "output/docs/efficientdet_race"),
         "output/docs/efficientdet_race", {"race.md": "efficientdet_race_cpu.md"}, (10, 30)),
    # D3 at batch 1 only: its batch-8 training step needs more than 24 GiB without
    # checkpointing (checkpointing_d3_batch8 below measures it with)
    Step("efficientdet_race_cpu_d3",
         _tool("efficientdet_race", "race", "--variants", "D3", "--batch-sizes", "1",
               "--threads", "1", "2", "--repeats", "5", "--warmup", "2",
               "--output-dir", "output/docs/efficientdet_race_d3"),
         "output/docs/efficientdet_race_d3", {"race.md": "efficientdet_race_cpu_d3.md"}, (8, 25)),
    *[Step(f"checkpointing_{name}",
           _tool("benchmark_checkpointing",
                 "--config-file", f"configs/EfficientDet/EfficientDet-{variant}.yaml",
                 "--batch-sizes", *batches, *extra, "--output-dir", CHECKPOINTING,
                 "--output-name", f"checkpointing_{name}"),
           CHECKPOINTING, _outputs(f"checkpointing_{name}", f"checkpointing_{name}", "md", "csv"), minutes)
      for name, variant, batches, extra, minutes in [
          ("d0", "D0", ["1", "4"], [], (1, 3)),
          ("d3", "D3", ["2"], [], (2, 6)),
          ("d3_batch8", "D3", ["8"], ["--variants", "on", "--repeats", "2"], (3, 10)),  # too big without it
      ]],
    Step("profile_d0_cpu",
         _tool("profile_model", "--variant", "D0", "--batch-sizes", "1", "8", "--threads", "1",
               "--repeats", "5", "--output-dir", "output/docs/profile_d0"),
         "output/docs/profile_d0", _outputs("profile", "profile_d0_cpu", "md", "csv"), (5, 15)),
    Step("efficientdet_race_compiled",
         _tool("efficientdet_race", "race", "--variants", "D0", "--batch-sizes", "1", "8", "--threads", "1",
               "--repeats", "3", "--warmup", "1", "--compiled", "--output-dir",
               "output/docs/efficientdet_race_compiled"),
         "output/docs/efficientdet_race_compiled",
         _outputs("race", "efficientdet_race_compiled", "md", "csv"), (15, 45)),
]


def step_command(step: Step, docs: Path) -> List[str]:
    """``step.command`` with its placeholders filled in (generating the validation
    images if a step needs them and they are not there yet)."""
    if any("{val_images}" in part for part in step.command):
        import bifpn_d2  # noqa: F401  (registers the built-in datasets)
        from bifpn_d2.data.synthetic import ensure_generated

        val_images = ensure_generated("synthetic_shapes_val")[1]
    else:
        val_images = ""
    return [part.format(docs=docs, val_images=val_images) for part in step.command]


def run_steps(steps: Sequence[Step], root: Path, docs: Path, say=print) -> List[str]:
    """Run ``steps`` in order from ``root``, copying each one's files into ``docs``; return
    the names of the steps that failed (their docs files are left as they were)."""
    failed: List[str] = []
    low_left = sum(s.minutes[0] for s in steps)
    high_left = sum(s.minutes[1] for s in steps)
    for index, step in enumerate(steps, 1):
        say(f"[{index}/{len(steps)}] {step.name}: about {step.minutes[0]}-{step.minutes[1]} min "
            f"(all left: {low_left}-{high_left} min on a 2-core CPU)")
        started = time.time()
        Path(root, step.out).mkdir(parents=True, exist_ok=True)
        code = subprocess.call(step_command(step, docs), cwd=root)
        missing = [name for name in step.copies if not Path(root, step.out, name).is_file()]
        if code != 0 or missing:
            failed.append(step.name)
            say(f"  {step.name} FAILED (exit {code}{', missing ' + str(missing) if missing else ''}); "
                "its docs files are unchanged")
        else:
            for name, target in step.copies.items():
                shutil.copyfile(Path(root, step.out, name), docs / target)
            say(f"  {step.name} done in {(time.time() - started) / 60:.1f} min"
                + (f"; copied {', '.join(step.copies.values())}" if step.copies else ""))
        low_left -= step.minutes[0]
        high_left -= step.minutes[1]
    return failed
