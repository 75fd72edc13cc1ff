"""Exact annotations of one rendered image (:func:`~bifpn_d2.data.shapes.render_image`) in
the formats Detectron2's heads and evaluators read: COCO instances with RLE masks, a
semantic map, and a COCO panoptic PNG with its segments.

Every annotation is read off the renderer's map of visible objects, so masks, boxes,
areas, the semantic map and the panoptic segments agree pixel for pixel.
"""
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils

from .shapes import SHAPE_CLASSES

__all__ = [
    "BACKGROUND_CATEGORY_ID",
    "SEM_SEG_CLASSES",
    "instance_annotations",
    "panoptic_segments",
    "semantic_map",
]

# Semantic labels: 0 is background, k >= 1 the shape of COCO category id k.
SEM_SEG_CLASSES = ("background",) + SHAPE_CLASSES
# Panoptic: the background is one "stuff" segment of this category (things are 1..5).
BACKGROUND_CATEGORY_ID = len(SHAPE_CLASSES) + 1

Objects = Sequence[Tuple[int, List[int], int]]  # (category_id, [x, y, w, h], area) per object


def instance_annotations(objects: Objects, instance_map: np.ndarray) -> List[Dict[str, Any]]:
    """COCO annotations (without ``id`` / ``image_id``): ``category_id``, ``bbox`` (XYWH
    px), ``area`` (visible pixels), ``iscrowd`` 0 and ``segmentation`` as compressed RLE
    (``{"size": [h, w], "counts": str}``; Detectron2 reads it with
    ``INPUT.MASK_FORMAT "bitmask"``)."""
    annotations = []
    for index, (category_id, bbox, area) in enumerate(objects):
        rle = mask_utils.encode(np.asfortranarray(instance_map == index, dtype=np.uint8))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {"category_id": category_id, "bbox": list(bbox), "area": area, "iscrowd": 0, "segmentation": rle}
        )
    return annotations


def semantic_map(objects: Objects, instance_map: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8: each pixel's index in :data:`SEM_SEG_CLASSES` (0 = background)."""
    category_of_index = np.array([0] + [category_id for category_id, _, _ in objects], dtype=np.uint8)
    return category_of_index[instance_map.astype(np.int64) + 1]


def panoptic_segments(objects: Objects, instance_map: np.ndarray) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """The COCO panoptic PNG's pixels and its ``segments_info``.

    Object ``k`` is segment id ``k + 1``; the background is one segment of category
    :data:`BACKGROUND_CATEGORY_ID` with the next id. Returns the ``(H, W, 3)`` uint8
    image (segment id = R + 256 G + 256**2 B, as COCO) and one ``{"id", "category_id",
    "area", "bbox", "iscrowd"}`` per segment.
    """
    segment_ids = instance_map.astype(np.int64) + 1
    background_id = len(objects) + 1
    segment_ids[instance_map < 0] = background_id
    segments = [
        {"id": index + 1, "category_id": category_id, "area": area, "bbox": list(bbox), "iscrowd": 0}
        for index, (category_id, bbox, area) in enumerate(objects)
    ]
    background = instance_map < 0
    if background.any():
        rows, cols = np.flatnonzero(background.any(axis=1)), np.flatnonzero(background.any(axis=0))
        box = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        segments.append(
            {"id": background_id, "category_id": BACKGROUND_CATEGORY_ID, "area": int(background.sum()),
             "bbox": box, "iscrowd": 0}
        )
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], axis=-1)
    return rgb.astype(np.uint8), segments
