"""Which detections cost a detector its AP on one object size: the confident false
positives, by kind, read from the detections a run's evaluation saved.

AP on large objects can fall with every large object found: COCO's AP_large also counts
the *false* detections whose box is large, and a confident one ranks above true ones.
This module classes every detection (COCO ``[x, y, w, h]`` boxes, scores, classes, as
Detectron2's ``COCOEvaluator`` writes them to ``coco_instances_results.json``) the way
COCO's AP50 matches them: in score order, each detection takes the unmatched ground-truth
box of its class that it overlaps most, at IoU >= 0.5. A detection that matches none is

- a **duplicate**: IoU >= 0.5 with a box of its class that a higher-scored one took;
- **mislocalised**: its best IoU with a box of its class is in [0.1, 0.5) (a part of an
  object, or a box spanning several);
- a **wrong class**: IoU >= 0.5 with a box of another class;
- **background**: none of these.

Counts are per size bucket of the *detection's* box (COCO's rule for a detection no
ground truth takes), for detections scored at least ``min_score``; a true detection whose
ground truth lies in another bucket (by its COCO ``area``, as the evaluator reads it: the
mask's area where there is one) is ``tp_other``, which that bucket's AP ignores.
"""

from typing import Dict, List, Sequence

import numpy as np
from pycocotools import mask as mask_util

from .object_sizes import SIZE_BUCKETS, size_bucket

__all__ = ["KINDS", "classify_detections", "false_positive_table"]

KINDS = ("tp", "tp_other", "duplicate", "mislocalised", "wrong_class", "background")
MATCH_IOU, PART_IOU = 0.5, 0.1


def classify_detections(detections: Sequence[dict], ground_truth: Sequence[dict]) -> List[str]:
    """The kind (one of :data:`KINDS`) of each of one image's ``detections`` (dicts with
    ``bbox`` XYWH, ``score``, ``category_id``) against its ``ground_truth`` (dicts with
    ``bbox`` XYWH, ``category_id``, ``area``), in the order given."""
    kinds = ["background"] * len(detections)
    if not detections or not ground_truth:
        return kinds
    iou = mask_util.iou([d["bbox"] for d in detections], [g["bbox"] for g in ground_truth],
                        [0] * len(ground_truth))
    gt_class = np.array([g["category_id"] for g in ground_truth])
    taken = np.zeros(len(ground_truth), bool)
    for i in sorted(range(len(detections)), key=lambda k: -detections[k]["score"]):
        same = gt_class == detections[i]["category_id"]
        free = np.where(same & ~taken, iou[i], -1.0)
        j = int(np.argmax(free))
        best_same_class = np.where(same, iou[i], 0.0).max()
        if free[j] >= MATCH_IOU:
            taken[j] = True
            same_bucket = size_bucket(ground_truth[j]["area"]) == size_bucket(_area(detections[i]))
            kinds[i] = "tp" if same_bucket else "tp_other"
        elif best_same_class >= MATCH_IOU:
            kinds[i] = "duplicate"
        elif best_same_class >= PART_IOU:
            kinds[i] = "mislocalised"
        elif (iou[i] >= MATCH_IOU).any():
            kinds[i] = "wrong_class"
    return kinds


def _area(detection: dict) -> float:
    _, _, w, h = detection["bbox"]
    return float(w * h)


def false_positive_table(
    detections: Sequence[dict], coco_ground_truth: dict, min_score: float = 0.5
) -> List[Dict[str, object]]:
    """One row per size bucket (and ``all``): how many detections scored >= ``min_score``
    have their box in it, by kind (:data:`KINDS`), and the ground-truth boxes of the
    bucket. ``coco_ground_truth``: a COCO dict (``images``, ``annotations``), as
    Detectron2's ``convert_to_coco_dict`` gives."""
    truth: Dict[int, List[dict]] = {image["id"]: [] for image in coco_ground_truth["images"]}
    for annotation in coco_ground_truth["annotations"]:
        if not annotation.get("iscrowd", 0):
            truth[annotation["image_id"]].append(annotation)
    found: Dict[int, List[dict]] = {}
    for detection in detections:
        if detection["image_id"] not in truth:
            raise ValueError(f"detection on image {detection['image_id']!r}, "
                             "which the ground truth does not have")
        found.setdefault(detection["image_id"], []).append(detection)
    counts = {name: dict.fromkeys(KINDS, 0) for name, _, _ in SIZE_BUCKETS}
    boxes = dict.fromkeys(counts, 0)
    for image_id, ground_truth in truth.items():
        for annotation in ground_truth:
            boxes[size_bucket(annotation["area"])] += 1
        image_detections = found.get(image_id, [])
        for detection, kind in zip(image_detections, classify_detections(image_detections, ground_truth)):
            if detection["score"] >= min_score:
                counts[size_bucket(_area(detection))][kind] += 1
    rows = [dict(size=name, boxes=boxes[name], **counts[name]) for name in counts]
    rows.append(dict(size="all", boxes=sum(boxes.values()),
                     **{kind: sum(row[kind] for row in rows) for kind in KINDS}))
    return rows
