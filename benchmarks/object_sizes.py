"""Where a two-stage detector loses objects of one size: its proposals, or its box head.

For a trained R-CNN (Detectron2's ``GeneralizedRCNN`` with an RPN and standard ROI box
head) and a registered dataset, per COCO size bucket of the ground-truth boxes (area
below 32**2, below 96**2, above; in the image's own pixels):

- **proposal recall**: the fraction of ground-truth boxes that one of the RPN's test-time
  proposals (``MODEL.RPN.POST_NMS_TOPK_TEST`` of them) overlaps at IoU 0.5 and at 0.7;
- **oracle box head**: the box head run on the ground-truth boxes themselves as
  proposals, which isolates it from the RPN: the fraction whose top class is the true one,
  the mean probability of the true class, and the mean IoU of the true class's regressed
  box with the ground truth.

A neck that trails on large objects through its coarse levels (which the RPN's large
anchors read) shows it in the recall; one that trails through the levels the box pooler
reads for large boxes shows it in the oracle columns.
"""

from collections import defaultdict
from typing import Any, Dict, List

import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

__all__ = ["SIZE_BUCKETS", "size_bucket", "size_diagnosis"]

# COCO's area ranges of AP_small / AP_medium / AP_large.
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def size_bucket(area: float) -> str:
    """The COCO size bucket (``small``, ``medium`` or ``large``) of a box area in pixels."""
    for name, low, high in SIZE_BUCKETS:
        if low <= area < high:
            return name
    raise ValueError(f"area {area} is not a box area")


def _ground_truth(record: Dict[str, Any], scale_x: float, scale_y: float):
    annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    classes = [a["category_id"] for a in annotations]
    original = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    areas = (original[:, 2] - original[:, 0]) * (original[:, 3] - original[:, 1])
    scaled = original * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    return scaled, torch.tensor(classes, dtype=torch.int64), areas


@torch.no_grad()
def size_diagnosis(model: torch.nn.Module, cfg, dataset_name: str) -> List[Dict[str, Any]]:
    """One row per size bucket (and one ``all``) of ``dataset_name``: ``boxes``,
    ``recall@0.5``, ``recall@0.7``, ``oracle_top1``, ``oracle_p_true``, ``oracle_iou``.

    Args:
        model: a trained ``GeneralizedRCNN`` (eval mode is set here).
        cfg: its config (the test-time input size and the dataset mapper come from it).
        dataset_name: a registered dataset with box annotations whose ``category_id``
            are contiguous class indices (Detectron2's convention after registration).
    """
    model.eval()
    mapper = DatasetMapper(cfg, is_train=False)
    roi_heads = model.roi_heads
    values: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for record in DatasetCatalog.get(dataset_name):
        inputs = mapper(dict(record))
        height, width = inputs["image"].shape[-2:]
        scale_x, scale_y = width / record["width"], height / record["height"]
        gt_boxes, gt_classes, areas = _ground_truth(record, scale_x, scale_y)
        if not len(gt_boxes):
            continue
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        best_iou = pairwise_iou(Boxes(gt_boxes), proposals[0].proposal_boxes).max(dim=1).values

        oracle = Instances((height, width))
        oracle.proposal_boxes = Boxes(gt_boxes)
        levels = [features[f] for f in roi_heads.box_in_features]
        pooled = roi_heads.box_pooler(levels, [oracle.proposal_boxes])
        logits, deltas = roi_heads.box_predictor(roi_heads.box_head(pooled))
        probs = logits.softmax(dim=1)
        rows = torch.arange(len(gt_boxes))
        top1 = probs[:, :-1].argmax(dim=1) == gt_classes  # the last column is background
        regressed = roi_heads.box_predictor.predict_boxes((logits, deltas), [oracle])[0]
        regressed = regressed.view(len(gt_boxes), -1, 4)  # (boxes, classes or 1, 4)
        true_box = regressed[rows, gt_classes] if regressed.shape[1] > 1 else regressed[:, 0]
        iou = matched_pairwise_iou(Boxes(true_box), Boxes(gt_boxes))

        for i, area in enumerate(areas.tolist()):
            for bucket in (size_bucket(area), "all"):
                v = values[bucket]
                v["recall@0.5"].append(float(best_iou[i] >= 0.5))
                v["recall@0.7"].append(float(best_iou[i] >= 0.7))
                v["oracle_top1"].append(float(top1[i]))
                v["oracle_p_true"].append(float(probs[i, gt_classes[i]]))
                v["oracle_iou"].append(float(iou[i]))
    table = []
    for bucket in [name for name, _, _ in SIZE_BUCKETS] + ["all"]:
        if bucket not in values:
            continue
        v = values[bucket]
        row: Dict[str, Any] = {"size": bucket, "boxes": len(v["recall@0.5"])}
        row.update({key: 100.0 * sum(x) / len(x) if key != "oracle_iou" else sum(x) / len(x)
                    for key, x in v.items()})
        table.append(row)
    return table
