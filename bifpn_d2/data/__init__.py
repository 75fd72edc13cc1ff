"""Datasets shipped with bifpn_d2; importing this package registers them with Detectron2.

Registered names (generated lazily on first ``DatasetCatalog.get`` into
``$BIFPN_D2_DATASETS``, else ``~/.cache/bifpn_d2/datasets``; see :mod:`.synthetic`):
``synthetic_shapes_train`` (600 images, 320 px), ``synthetic_shapes_val`` (100, 320 px),
``synthetic_shapes_tiny_train`` (16, 128 px), ``synthetic_shapes_tiny_val`` (8, 128 px).
"""

from .synthetic import (
    DATASET_ROOT_ENV,
    DEFAULT_SYNTHETIC_DATASETS,
    SHAPE_CLASSES,
    SyntheticSpec,
    default_dataset_root,
    ensure_generated,
    generate_synthetic_coco,
    is_synthetic_dataset,
    register_default_synthetic_datasets,
    register_synthetic_dataset,
    synthetic_dataset_dir,
)

register_default_synthetic_datasets()

__all__ = [
    "DATASET_ROOT_ENV",
    "DEFAULT_SYNTHETIC_DATASETS",
    "SHAPE_CLASSES",
    "SyntheticSpec",
    "default_dataset_root",
    "ensure_generated",
    "generate_synthetic_coco",
    "is_synthetic_dataset",
    "register_default_synthetic_datasets",
    "register_synthetic_dataset",
    "synthetic_dataset_dir",
]
