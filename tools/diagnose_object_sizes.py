#!/usr/bin/env python
"""Where trained detectors lose objects of one size, per COCO size bucket (see
benchmarks.object_sizes): for R-CNNs, proposal recall and the box head on ground-truth
boxes; for RetinaNets, the head's class probability and regressed IoU at the anchors
assigned to each box, per level of its best anchor, and the final detections' recall.

    python tools/diagnose_object_sizes.py --dataset synthetic_shapes_dev \\
        --run FPN=output/neck_study/faster_rcnn/fpn/seed0 \\
        --run BiFPN=output/neck_study/faster_rcnn/candidate/seed0 --output-dir output/sizes

Each ``--run LABEL=DIR`` is a training output directory holding ``config.yaml`` and
``model_final.pth``. Writes ``object_sizes.md`` and ``object_sizes.csv`` to
``--output-dir`` and prints the table.
"""
import argparse
import logging
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import bifpn_d2  # noqa: F401  (registers the backbones and the built-in datasets)
from benchmarks import markdown_table, write_csv, write_text
from benchmarks.comparison import add_run_arguments
from benchmarks.object_sizes import dense_size_diagnosis, size_diagnosis
from bifpn_d2.checkpoint import check_detectron2_checkpoint
from bifpn_d2.engine import ConfigError
from bifpn_d2.engine.config import load_config

# meta-architecture -> (diagnosis, title, legend of its columns)
DIAGNOSES = {
    "GeneralizedRCNN": (
        size_diagnosis, "Proposals and box head by object size",
        "recall@t: ground-truth boxes that a test-time RPN proposal overlaps at IoU >= t (%); "
        "oracle_*: the box head on the ground-truth boxes as proposals: top class right (%), "
        "mean probability of the true class (%), mean IoU of the regressed box; part_p_true: mean "
        "probability of the true class on the box's four corner parts (60 % of its width and height, %)."),
    "RetinaNet": (
        dense_size_diagnosis, "The head at each box's anchors, by object size",
        "Anchors of a box: those training assigns to it (IoU >= the foreground threshold, or its best). "
        "level: mean level of its best anchor; p_true: the highest true-class probability over them (%); "
        "iou_top: IoU of the box regressed where that probability is; iou_best: the best regressed IoU; "
        "detected@t: boxes a final detection of the true class overlaps at IoU >= t (%)."),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output-dir", default="output/object_sizes")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    models = []
    for label, folder in args.run:
        config, weights = os.path.join(folder, "config.yaml"), os.path.join(folder, "model_final.pth")
        for path in (config, weights):
            if not os.path.isfile(path):
                parser.error(f"--run {label}={folder}: no {os.path.basename(path)} there")
        try:
            check_detectron2_checkpoint(weights)
            cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights])
        except (ConfigError, ValueError) as e:
            parser.error(f"--run {label}: {e}")
        kind = cfg.MODEL.META_ARCHITECTURE
        if kind not in DIAGNOSES or (kind == "GeneralizedRCNN" and not cfg.MODEL.ROI_HEADS.NAME):
            parser.error(f"--run {label}: {kind} is neither an R-CNN with ROI heads nor a RetinaNet; "
                         f"diagnosed: {sorted(DIAGNOSES)}")
        models.append((label, cfg))
    if len({cfg.MODEL.META_ARCHITECTURE for _, cfg in models}) > 1:
        parser.error("--run: every run must be of one kind (R-CNNs or RetinaNets), to share one table")
    logging.getLogger("timm").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    for label, cfg in models:
        model = build_model(cfg)
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        print(f"{label}: {args.dataset} ...", flush=True)
        diagnosis = DIAGNOSES[cfg.MODEL.META_ARCHITECTURE][0]
        rows += [{"run": label, **row} for row in diagnosis(model, cfg, args.dataset)]
    _, title, legend = DIAGNOSES[models[0][1].MODEL.META_ARCHITECTURE]
    text = f"# {title}: {args.dataset}\n\n{legend}\n\n" + markdown_table(rows, digits=3)
    print("\n" + text)
    write_csv(rows, os.path.join(args.output_dir, "object_sizes.csv"))
    write_text(text, os.path.join(args.output_dir, "object_sizes.md"))
    return rows


if __name__ == "__main__":
    main()
