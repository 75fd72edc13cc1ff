"""EfficientDet's scale jitter and square crop (Tan et al. 2020: 0.1-2.0x), from
Detectron2's own ``ResizeScale`` and ``FixedSizeCrop`` (as its large-scale-jitter
baselines), for YAML configs (``INPUT.SCALE_JITTER``) and LazyConfig alike.

LazyConfig::

    from bifpn_d2.data.scale_jitter import scale_jitter_augmentations
    dataloader.train.mapper.augmentations = L(scale_jitter_augmentations)(
        size=512, min_scale=0.1, max_scale=2.0)
"""

from typing import List, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

__all__ = ["build_train_mapper", "check_scale_jitter", "scale_jitter_augmentations"]


def check_scale_jitter(key: str, scales: Sequence[float]) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``scales`` is empty (off) or
    ``(min, max)`` with ``0 < min <= max``."""
    if len(scales) == 0:
        return
    if len(scales) != 2 or not 0 < scales[0] <= scales[1]:
        raise ValueError(
            f"{key}={tuple(scales)!r} is not valid; it must be () (off) or (min, max) with 0 < min <= max, "
            "e.g. (0.1, 2.0)"
        )


def scale_jitter_augmentations(
    size: int, min_scale: float, max_scale: float, horizontal_flip: bool = True
) -> List[T.Augmentation]:
    """Flip, resize to ``size`` times a random scale in ``[min_scale, max_scale]`` (the
    longer side fits; aspect kept), then a random ``size x size`` crop (padded where the
    image is smaller). Boxes are transformed and clipped to the crop by the mapper;
    instances that leave it are dropped (an image may end with none)."""
    check_scale_jitter("scale jitter", (min_scale, max_scale))
    augmentations: List[T.Augmentation] = [T.RandomFlip()] if horizontal_flip else []
    return augmentations + [
        T.ResizeScale(min_scale=min_scale, max_scale=max_scale, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size)),
    ]


def build_train_mapper(cfg: CfgNode) -> DatasetMapper:
    """Detectron2's training ``DatasetMapper``; with ``INPUT.SCALE_JITTER`` ``(min, max)``
    its augmentations are :func:`scale_jitter_augmentations` for a square of side
    ``INPUT.MAX_SIZE_TRAIN`` (horizontal flip unless ``INPUT.RANDOM_FLIP`` is "none")."""
    if not cfg.INPUT.SCALE_JITTER:
        return DatasetMapper(cfg, is_train=True)
    if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
        raise ValueError(
            "INPUT.SCALE_JITTER flips horizontally or not at all; "
            f"INPUT.RANDOM_FLIP={cfg.INPUT.RANDOM_FLIP!r} is not supported with it "
            "(allowed: 'horizontal', 'none')"
        )
    low, high = cfg.INPUT.SCALE_JITTER
    augmentations = scale_jitter_augmentations(
        cfg.INPUT.MAX_SIZE_TRAIN, low, high, horizontal_flip=cfg.INPUT.RANDOM_FLIP == "horizontal"
    )
    return DatasetMapper(cfg, is_train=True, augmentations=augmentations, recompute_boxes=cfg.MODEL.MASK_ON)
