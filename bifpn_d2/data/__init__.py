"""Datasets shipped with bifpn_d2; importing this package registers them with Detectron2.

Registered names (generated lazily on first ``DatasetCatalog.get`` into
``$BIFPN_D2_DATASETS``, else ``~/.cache/bifpn_d2/datasets``; see :mod:`.synthetic`):
``synthetic_shapes_train`` (600 images, 320 px), ``synthetic_shapes_val`` (100, 320 px),
``synthetic_shapes_tiny_train`` (16, 128 px), ``synthetic_shapes_tiny_val`` (8, 128 px).
"""

from . import synthetic
from .synthetic import *  # noqa: F401,F403

synthetic.register_default_synthetic_datasets()

__all__ = list(synthetic.__all__)
