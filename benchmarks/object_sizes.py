"""Where a two-stage detector loses objects of one size: its proposals, or its box head.

For a trained R-CNN (Detectron2's ``GeneralizedRCNN`` with an RPN and standard ROI box
head) and a registered dataset, per COCO size bucket of the ground-truth boxes (area
below 32**2, below 96**2, above; in the image's own pixels):

- **proposal recall**: the fraction of ground-truth boxes that one of the RPN's test-time
  proposals (``MODEL.RPN.POST_NMS_TOPK_TEST`` of them) overlaps at IoU 0.5 and at 0.7;
- **oracle box head**: the box head run on the ground-truth boxes themselves as
  proposals, which isolates it from the RPN: the fraction whose top class is the true one,
  the mean probability of the true class, and the mean IoU of the true class's regressed
  box with the ground truth;
- **part_p_true**: the box head's mean true-class probability on the four corner parts
  of each ground-truth box (60 % of its width and height, IoU 0.36 with it): how much it
  takes a part of an object for the object, a box that AP counts as false.

A neck that trails on large objects through its coarse levels (which the RPN's large
anchors read) shows it in the recall; one that trails through the levels the box pooler
reads for large boxes shows it in the oracle columns.

For a trained dense detector (Detectron2's ``RetinaNet``), per size bucket, what its head
predicts at the anchors that training assigns to each ground-truth box (IoU at least the
foreground threshold, or the box's best anchor), and what comes out of its inference:

- **level**: the mean pyramid level of each box's best anchor (3 = P3, ...);
- **p_true**: the highest true-class probability over its anchors;
- **iou_top**: the IoU of the box regressed at the anchor of that highest probability
  (the one that survives NMS), **iou_best**: the best regressed IoU over its anchors;
- **detected@t**: boxes that a final detection of the true class overlaps at IoU >= t.

Low ``p_true`` says the features at those levels do not tell the object; low ``iou_*``
with a good ``p_true`` says they do but do not place it.
"""

from collections import defaultdict
from typing import Any, Dict, Iterator, List, Tuple

import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

__all__ = ["SIZE_BUCKETS", "dense_size_diagnosis", "size_bucket", "size_diagnosis"]

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


def _images_with_boxes(model: torch.nn.Module, cfg, dataset_name: str) -> Iterator[Tuple[Any, ...]]:
    """For each image of ``dataset_name`` with boxes, as the model sees it at test time:
    ``(images, features, gt_boxes, gt_classes, areas)``: the model's preprocessed
    ``ImageList`` of that one image, its backbone's features, the ground-truth boxes
    scaled to the input (XYXY), their classes, and their areas in the image's own pixels."""
    mapper = DatasetMapper(cfg, is_train=False)
    for record in DatasetCatalog.get(dataset_name):
        inputs = mapper(dict(record))
        height, width = inputs["image"].shape[-2:]
        scale_x, scale_y = width / record["width"], height / record["height"]
        gt_boxes, gt_classes, areas = _ground_truth(record, scale_x, scale_y)
        if not len(gt_boxes):
            continue
        images = model.preprocess_image([inputs])
        yield images, model.backbone(images.tensor), gt_boxes, gt_classes, areas


@torch.no_grad()
def size_diagnosis(model: torch.nn.Module, cfg, dataset_name: str) -> List[Dict[str, Any]]:
    """One row per size bucket (and one ``all``) of ``dataset_name``: ``boxes``,
    ``recall@0.5``, ``recall@0.7``, ``oracle_top1``, ``oracle_p_true``, ``oracle_iou``,
    ``part_p_true``.

    Args:
        model: a trained ``GeneralizedRCNN`` (eval mode is set here).
        cfg: its config (the test-time input size and the dataset mapper come from it).
        dataset_name: a registered dataset with box annotations whose ``category_id``
            are contiguous class indices (Detectron2's convention after registration).
    """
    model.eval()
    roi_heads = model.roi_heads
    values: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for images, features, gt_boxes, gt_classes, areas in _images_with_boxes(model, cfg, dataset_name):
        height, width = images.image_sizes[0]
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
        part_p_true = _part_probability(roi_heads, levels, gt_boxes, gt_classes)

        for i, area in enumerate(areas.tolist()):
            for bucket in (size_bucket(area), "all"):
                v = values[bucket]
                v["recall@0.5"].append(float(best_iou[i] >= 0.5))
                v["recall@0.7"].append(float(best_iou[i] >= 0.7))
                v["oracle_top1"].append(float(top1[i]))
                v["oracle_p_true"].append(float(probs[i, gt_classes[i]]))
                v["oracle_iou"].append(float(iou[i]))
                v["part_p_true"].append(float(part_p_true[i]))
    percent = ("recall@0.5", "recall@0.7", "oracle_top1", "oracle_p_true", "part_p_true")
    return _bucket_table(values, percent=percent)


PART = 0.6  # a corner part of a box: this fraction of its width and height (IoU 0.36 with it)


def _part_probability(roi_heads, levels, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The box head's mean true-class probability over the four corner parts of each of
    ``boxes`` (``(N, 4)`` XYXY; parts :data:`PART` of its width and height): how much it
    scores a part of an object as the object, a detection AP counts as false. ``(N,)``."""
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    w, h = (x1 - x0) * PART, (y1 - y0) * PART
    parts = torch.stack([
        torch.stack([x0, y0, x0 + w, y0 + h], dim=1), torch.stack([x1 - w, y0, x1, y0 + h], dim=1),
        torch.stack([x0, y1 - h, x0 + w, y1], dim=1), torch.stack([x1 - w, y1 - h, x1, y1], dim=1),
    ], dim=1).reshape(-1, 4)  # (N * 4, 4): the four parts of box 0, then of box 1, ...
    pooled = roi_heads.box_pooler(levels, [Boxes(parts)])
    logits, _ = roi_heads.box_predictor(roi_heads.box_head(pooled))
    probs = logits.softmax(dim=1)[torch.arange(len(parts)), classes.repeat_interleave(4)]
    return probs.view(-1, 4).mean(dim=1)


def _bucket_table(values: Dict[str, Dict[str, List[float]]], percent) -> List[Dict[str, Any]]:
    """One row per size bucket present (each followed by its sub-buckets ``"<size>, ..."``,
    and ``all``): ``boxes`` and the mean of each value, in % for the keys in ``percent``."""
    table = []
    names = [name for name, _, _ in SIZE_BUCKETS]
    ordered = [b for name in names for b in [name] + sorted(k for k in values if k.startswith(name + ", "))]
    for bucket in ordered + ["all"]:
        if bucket not in values:
            continue
        v = values[bucket]
        row: Dict[str, Any] = {"size": bucket, "boxes": len(next(iter(v.values())))}
        row.update({key: (100.0 if key in percent else 1.0) * sum(x) / len(x) for key, x in v.items()})
        table.append(row)
    return table


@torch.no_grad()
def dense_size_diagnosis(model: torch.nn.Module, cfg, dataset_name: str) -> List[Dict[str, Any]]:
    """One row per size bucket (then one per level of the boxes' best anchors within it,
    and one ``all``) of ``dataset_name``: ``boxes``, ``level``, ``p_true``, ``iou_top``,
    ``iou_best``, ``detected@0.5``, ``detected@0.75`` (see the module's docstring).

    Args:
        model: a trained ``RetinaNet`` (eval mode is set here).
        cfg: its config (the test-time input size and the dataset mapper come from it).
        dataset_name: as for :func:`size_diagnosis`.
    """
    model.eval()
    foreground = cfg.MODEL.RETINANET.IOU_THRESHOLDS[-1]
    values: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for images, features, gt_boxes, gt_classes, areas in _images_with_boxes(model, cfg, dataset_name):
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        logits, deltas = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
        anchors = model.anchor_generator(features)
        level_of_anchor = torch.cat([  # "p3" -> 3, for each anchor of that level
            torch.full((len(a),), float(name[1:])) for name, a in zip(model.head_in_features, anchors)])
        anchor_boxes = Boxes.cat(anchors).tensor
        probs = torch.cat(logits, dim=1)[0].sigmoid()  # (R, K)
        regressed = model.box2box_transform.apply_deltas(torch.cat(deltas, dim=1)[0], anchor_boxes)
        overlap = pairwise_iou(Boxes(gt_boxes), Boxes(anchor_boxes))  # (G, R)
        regressed_iou = pairwise_iou(Boxes(gt_boxes), Boxes(regressed))  # (G, R)
        # Detectron2's RetinaNet gives every box its best anchors too (low-quality matches).
        assigned = (overlap >= foreground) | (overlap == overlap.max(dim=1, keepdim=True).values)
        detections = model.forward_inference(images, features, predictions)[0]  # transposes its own copy
        detection_iou = pairwise_iou(Boxes(gt_boxes), detections.pred_boxes)
        same_class = gt_classes[:, None] == detections.pred_classes[None, :]
        detected = torch.zeros(len(gt_boxes))
        if len(detections):
            detected = (detection_iou * same_class).max(dim=1).values
        for i, area in enumerate(areas.tolist()):
            mask = assigned[i]
            p_true, ious = probs[mask, gt_classes[i]], regressed_iou[i, mask]
            top = int(p_true.argmax())
            level = int(level_of_anchor[overlap[i].argmax()])
            size = size_bucket(area)
            for bucket in (size, f"{size}, best anchor on P{level}", "all"):
                v = values[bucket]
                v["level"].append(float(level))
                v["p_true"].append(float(p_true[top]))
                v["iou_top"].append(float(ious[top]))
                v["iou_best"].append(float(ious.max()))
                v["detected@0.5"].append(float(detected[i] >= 0.5))
                v["detected@0.75"].append(float(detected[i] >= 0.75))
    return _bucket_table(values, percent=("p_true", "detected@0.5", "detected@0.75"))
