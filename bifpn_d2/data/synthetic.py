"""Synthetic shapes: a deterministic COCO-format detection dataset that needs no download.

Images and boxes come from :mod:`.shapes`. A generation for one (split, num_images,
image_size, seed) lives in its own folder under the dataset root (``$BIFPN_D2_DATASETS``,
else ``~/.cache/bifpn_d2/datasets``)::

    <root>/synthetic_shapes_v2_<split>_n<num_images>_<image_size>px_seed<seed>/
        annotations.json      # COCO; its presence means the folder is complete
        images/000000.jpg ...

It is written into a temporary sibling folder and renamed into place, so concurrent
processes (one per GPU) never read a half-written dataset; a process that loses the race
discards its copy. Same arguments give byte-identical files; each image draws from its own
``numpy`` generator seeded by ``(seed, crc32(split), image index)``, so splits differ.

Registration with Detectron2 is lazy: :func:`register_synthetic_dataset` records the
folder's future paths in ``MetadataCatalog`` (``json_file``, ``image_root``,
``evaluator_type="coco"``) and generates only when ``DatasetCatalog.get(name)`` or
:func:`ensure_generated` is first called. :func:`register_default_synthetic_datasets` adds
the names in :data:`DEFAULT_SYNTHETIC_DATASETS` (``bifpn_d2.data`` calls it on import).
"""

import json
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image

from .shapes import SHAPE_CLASSES, render_image

__all__ = [
    "DATASET_ROOT_ENV",
    "DEFAULT_SYNTHETIC_DATASETS",
    "SHAPE_CLASSES",
    "SyntheticSpec",
    "TINY_OVERRIDES",
    "default_dataset_root",
    "ensure_generated",
    "generate_synthetic_coco",
    "is_synthetic_dataset",
    "register_default_synthetic_datasets",
    "register_synthetic_dataset",
    "synthetic_dataset_dir",
]

DATASET_ROOT_ENV = "BIFPN_D2_DATASETS"
_GENERATOR_VERSION = 2  # bump when the images change, so stale caches are not reused
_ANNOTATIONS_FILE = "annotations.json"
_IMAGES_DIR = "images"



@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: ``num_images`` square images of ``image_size`` px for ``split``."""

    num_images: int
    image_size: int
    seed: int = 0
    split: str = "train"


DEFAULT_SYNTHETIC_DATASETS: dict[str, SyntheticSpec] = {
    "synthetic_shapes_train": SyntheticSpec(600, 320, 0, "train"),
    "synthetic_shapes_val": SyntheticSpec(100, 320, 0, "val"),
    "synthetic_shapes_tiny_train": SyntheticSpec(16, 128, 0, "train"),
    "synthetic_shapes_tiny_val": SyntheticSpec(8, 128, 0, "val"),
}

# Config overrides (KEY VALUE ...) for smoke runs of the synthetic configs: the tiny splits
# at their 128 px, batch 2, no loader workers.
TINY_OVERRIDES = [
    "DATASETS.TRAIN", "('synthetic_shapes_tiny_train',)",
    "DATASETS.TEST", "('synthetic_shapes_tiny_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
]

_REGISTERED: dict[str, tuple[SyntheticSpec, Path]] = {}  # name -> (spec, root)


def default_dataset_root() -> Path:
    """``$BIFPN_D2_DATASETS`` if set, else ``~/.cache/bifpn_d2/datasets``."""
    env = os.environ.get(DATASET_ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bifpn_d2" / "datasets"


def synthetic_dataset_dir(
    root: Union[str, Path], num_images: int, image_size: int, seed: int, split: str = "train"
) -> Path:
    """The folder (existing or not) that holds one generation under ``root``."""
    version = f"synthetic_shapes_v{_GENERATOR_VERSION}"
    return Path(root).expanduser() / f"{version}_{split}_n{num_images}_{image_size}px_seed{seed}"


def generate_synthetic_coco(
    root: Union[str, Path], num_images: int, image_size: int, seed: int, split: str = "train"
) -> tuple[Path, Path]:
    """Generate under ``root`` unless already there; returns ``(json_path, image_dir)``.

    Safe to call from several processes at once: each writes into its own temporary folder
    next to the final one, the first rename wins, the others delete their copy.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must be a plain name (letters, digits, _ or -), got {split!r}")
    final_dir = synthetic_dataset_dir(root, num_images, image_size, seed, split)
    json_path, image_dir = final_dir / _ANNOTATIONS_FILE, final_dir / _IMAGES_DIR
    if json_path.is_file():
        return json_path, image_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    tmp_dir.chmod(0o755)  # mkdtemp makes it owner-only; the published folder should not be
    try:
        _write_dataset(tmp_dir, num_images, image_size, seed, split)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if not json_path.is_file():  # not a lost race: something else is in the way
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return json_path, image_dir


def register_synthetic_dataset(
    name: str,
    num_images: int,
    image_size: int,
    seed: int,
    root: Optional[Union[str, Path]] = None,
    split: str = "train",
) -> None:
    """Register ``name`` in Detectron2's catalogs; nothing is generated until it is loaded.

    ``root`` defaults to :func:`default_dataset_root` as resolved now. Registering the same
    name again with the same arguments is a no-op; with different ones, a ``ValueError``.
    """
    spec = SyntheticSpec(num_images, image_size, seed, split)
    root_path = Path(root).expanduser() if root is not None else default_dataset_root()
    if name in _REGISTERED and _REGISTERED[name] == (spec, root_path):
        return
    if name in DatasetCatalog.list():
        raise ValueError(f"Dataset {name!r} is already registered with other arguments")
    final_dir = synthetic_dataset_dir(root_path, num_images, image_size, seed, split)

    def load() -> list[dict]:
        json_path, image_dir = generate_synthetic_coco(root_path, *astuple(spec))
        return load_coco_json(str(json_path), str(image_dir), name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPE_CLASSES),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPE_CLASSES))},
        json_file=str(final_dir / _ANNOTATIONS_FILE),
        image_root=str(final_dir / _IMAGES_DIR),
        evaluator_type="coco",
    )
    _REGISTERED[name] = (spec, root_path)


def register_default_synthetic_datasets(root: Optional[Union[str, Path]] = None) -> None:
    """Register :data:`DEFAULT_SYNTHETIC_DATASETS`, skipping names already registered."""
    for name, spec in DEFAULT_SYNTHETIC_DATASETS.items():
        if name not in DatasetCatalog.list():
            register_synthetic_dataset(name, spec.num_images, spec.image_size, spec.seed, root, spec.split)


def is_synthetic_dataset(name: str) -> bool:
    """Whether ``name`` was registered by this module (its files appear on first use)."""
    return name in _REGISTERED


def ensure_generated(name: str) -> Optional[tuple[Path, Path]]:
    """Generate a registered synthetic dataset now; returns ``(json_path, image_dir)``.

    Call before building a ``COCOEvaluator``, which reads ``json_file`` directly. Names not
    registered by this module are left alone (returns None), so a training script may call
    it on every name in ``cfg.DATASETS``.
    """
    if name not in _REGISTERED:
        return None
    spec, root = _REGISTERED[name]
    return generate_synthetic_coco(root, *astuple(spec))


def _write_dataset(out_dir: Path, num_images: int, image_size: int, seed: int, split: str) -> None:
    """Write ``images/*.jpg`` then ``annotations.json`` into ``out_dir``."""
    image_dir = out_dir / _IMAGES_DIR
    image_dir.mkdir()
    split_key = zlib.crc32(split.encode())
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_key, index]))
        pixels, objects = render_image(rng, image_size)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(pixels).save(image_dir / file_name, quality=95)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for category_id, bbox, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": "bifpn_d2 synthetic shapes",
            "version": _GENERATOR_VERSION,
            "split": split,
            "seed": seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)
        ],
    }
    (out_dir / _ANNOTATIONS_FILE).write_text(json.dumps(coco, separators=(",", ":")))
