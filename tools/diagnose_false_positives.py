#!/usr/bin/env python
"""The confident false positives of trained detectors, by kind and size of box (see
benchmarks.false_positives), read from the detections their evaluation saved: nothing
runs a model, so it takes seconds.

    python tools/diagnose_false_positives.py --dataset synthetic_shapes_dev \\
        --run FPN=output/neck_study/faster_rcnn/fpn/seed0 \\
        --run BiFPN=output/neck_study/faster_rcnn/candidate/seed0 --output-dir output/false_positives

Each ``--run LABEL=DIR`` is a training output directory whose evaluation on ``--dataset``
wrote ``DIR/inference/<dataset>/coco_instances_results.json`` (tools/train_net.py and the
neck study do). Writes ``false_positives.md`` and ``false_positives.csv`` to
``--output-dir`` and prints the table.
"""
import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab, benchmarks/

from detectron2.data.datasets.coco import convert_to_coco_dict

import bifpn_d2  # noqa: F401  (registers the built-in datasets)
from benchmarks import markdown_table, write_csv, write_text
from benchmarks.comparison import add_run_arguments
from benchmarks.false_positives import false_positive_table

DETECTION_KEYS = {"image_id", "bbox", "score", "category_id"}  # of each entry of coco_instances_results.json
LEGEND = (
    "Detections scored >= {score} whose box is of that size (COCO's area ranges), matched as COCO's AP50 "
    "matches them. tp: takes a ground-truth box of its class and size at IoU >= 0.5; tp_other: one of "
    "another size (that size's AP ignores it); duplicate: IoU >= 0.5 with a box of its class already "
    "taken; mislocalised: best IoU with a box of its class in [0.1, 0.5); wrong_class: IoU >= 0.5 with a "
    "box of another class; background: the rest. boxes: ground-truth boxes of that size (by their COCO "
    "area, the mask's where there is one, as AP_small / medium / large read it)."
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--min-score", type=float, default=0.5, help="count detections scored at least this")
    parser.add_argument("--output-dir", default="output/false_positives")
    args = parser.parse_args(argv)
    if not 0.0 <= args.min_score <= 1.0:
        parser.error(f"--min-score must be in [0, 1], got {args.min_score}")
    results = []
    for label, folder in args.run:
        path = os.path.join(folder, "inference", args.dataset, "coco_instances_results.json")
        if not os.path.isfile(path):
            parser.error(f"--run {label}={folder}: no {path} (was the run evaluated on {args.dataset}?)")
        try:
            with open(path) as f:
                detections = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            parser.error(f"--run {label}: {path} is not valid JSON ({e})")
        if not isinstance(detections, list) or not all(
                isinstance(d, dict) and DETECTION_KEYS <= d.keys() for d in detections):
            parser.error(f"--run {label}: {path} is not a list of COCO detections "
                         f"(each with {', '.join(sorted(DETECTION_KEYS))})")
        results.append((label, detections))
    with contextlib.redirect_stdout(io.StringIO()):  # the converter logs every image
        truth = convert_to_coco_dict(args.dataset)
    rows = []
    for label, detections in results:
        try:
            rows += [{"run": label, **row} for row in false_positive_table(detections, truth, args.min_score)]
        except ValueError as e:
            parser.error(f"--run {label}: {e} (detections of another dataset?)")
    text = (f"# Confident detections by kind and box size: {args.dataset}\n\n"
            f"{LEGEND.format(score=args.min_score)}\n\n" + markdown_table(rows))
    print(text)
    write_csv(rows, os.path.join(args.output_dir, "false_positives.csv"))
    write_text(text, os.path.join(args.output_dir, "false_positives.md"))
    return rows


if __name__ == "__main__":
    main()
