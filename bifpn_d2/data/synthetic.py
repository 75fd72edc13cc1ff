"""Synthetic shapes: a deterministic dataset for every FPN head that needs no download.

Images come from :mod:`.shapes`, their exact annotations from :mod:`.annotations`. A
generation for one (split, num_images, image_size, seed, profile) lives in its own folder
under the dataset root (``$BIFPN_D2_DATASETS``, else ``~/.cache/bifpn_d2/datasets``)::

    <root>/synthetic_shapes_v3_<split>_n<num_images>_<image_size>px_seed<seed>[_<profile>]/
        images/000000.jpg ...
        sem_seg/000000.png ...   # semantic labels (0 background, k = category id k)
        panoptic/000000.png ...  # COCO panoptic PNGs (segment id = R + 256 G + 256**2 B)
        panoptic.json            # COCO panoptic segments
        annotations.json         # COCO instances with RLE masks; written last: its
                                 # presence means the folder is complete

It is written into a temporary sibling folder and renamed into place, so concurrent
processes (one per GPU) never read a half-written dataset; a process that loses the race
discards its copy. Same arguments give byte-identical files; each image draws from its own
``numpy`` generator seeded by ``(seed, crc32(split), image index)``, so splits differ.

Registration with Detectron2 is lazy: :func:`register_synthetic_dataset` registers three
names for one generation and records the folder's future paths in ``MetadataCatalog``;
files are generated only when ``DatasetCatalog.get(name)`` or :func:`ensure_generated` is
first called:

- ``<name>``: COCO instances (boxes and masks; ``evaluator_type="coco"``: box AP, and
  mask AP for models with masks, which read them with ``INPUT.MASK_FORMAT "bitmask"``);
- ``<name>_sem_seg``: semantic maps over :data:`SEM_SEG_CLASSES` (``"sem_seg"``: mIoU);
- ``<name>_panoptic``: COCO panoptic segments (``"coco_panoptic_seg"``: PQ).

:func:`register_default_synthetic_datasets` adds the names in
:data:`DEFAULT_SYNTHETIC_DATASETS` (``bifpn_d2.data`` calls it on import): a training
split, a *dev* split to choose on (arms, defaults, configs), the reporting split ``val``
that no choice looks at, two *transfer* sets of other generator settings (seed, image
size, object sizes, clutter) that are only ever reported, and tiny splits for tests.
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
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
from PIL import Image

from .annotations import (
    BACKGROUND_CATEGORY_ID,
    SEM_SEG_CLASSES,
    instance_annotations,
    panoptic_segments,
    semantic_map,
)
from .shapes import PROFILES, SHAPE_CLASSES, render_image

__all__ = [
    "DATASET_ROOT_ENV",
    "DEFAULT_SYNTHETIC_DATASETS",
    "SEM_SEG_CLASSES",
    "SHAPE_CLASSES",
    "TASK_SUFFIXES",
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
# Bump when the files change, so stale caches are not reused. 3: masks, semantic and
# panoptic annotations added (images and boxes as in 2).
_GENERATOR_VERSION = 3
_ANNOTATIONS_FILE = "annotations.json"
_PANOPTIC_FILE = "panoptic.json"
_IMAGES_DIR = "images"
_SEM_SEG_DIR = "sem_seg"
_PANOPTIC_DIR = "panoptic"
# The names registered for one generation: instances, semantic maps, panoptic segments.
TASK_SUFFIXES = ("", "_sem_seg", "_panoptic")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: ``num_images`` square images of ``image_size`` px for ``split``,
    with the object sizes and clutter of ``profile`` (one of :data:`~.shapes.PROFILES`)."""

    num_images: int
    image_size: int
    seed: int = 0
    split: str = "train"
    profile: str = "default"


DEFAULT_SYNTHETIC_DATASETS: dict[str, SyntheticSpec] = {
    "synthetic_shapes_train": SyntheticSpec(600, 320, 0, "train"),
    "synthetic_shapes_dev": SyntheticSpec(100, 320, 0, "dev"),  # choose here
    "synthetic_shapes_val": SyntheticSpec(100, 320, 0, "val"),  # report here
    # Transfer sets: other seeds, image sizes, object sizes and clutter; reported only.
    "synthetic_shapes_transfer_large": SyntheticSpec(100, 384, 1, "transfer", "large"),
    "synthetic_shapes_transfer_small": SyntheticSpec(100, 256, 2, "transfer", "small_cluttered"),
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
    root: Union[str, Path], num_images: int, image_size: int, seed: int, split: str = "train",
    profile: str = "default",
) -> Path:
    """The folder (existing or not) that holds one generation under ``root``."""
    version = f"synthetic_shapes_v{_GENERATOR_VERSION}"
    suffix = "" if profile == "default" else f"_{profile}"
    return Path(root).expanduser() / f"{version}_{split}_n{num_images}_{image_size}px_seed{seed}{suffix}"


def generate_synthetic_coco(
    root: Union[str, Path], num_images: int, image_size: int, seed: int, split: str = "train",
    profile: str = "default",
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
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {sorted(PROFILES)}")
    final_dir = synthetic_dataset_dir(root, num_images, image_size, seed, split, profile)
    json_path, image_dir = final_dir / _ANNOTATIONS_FILE, final_dir / _IMAGES_DIR
    if json_path.is_file():
        return json_path, image_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    tmp_dir.chmod(0o755)  # mkdtemp makes it owner-only; the published folder should not be
    try:
        _write_dataset(tmp_dir, num_images, image_size, seed, split, profile)
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
    profile: str = "default",
) -> None:
    """Register ``name``, ``name_sem_seg`` and ``name_panoptic`` (see the module docstring)
    in Detectron2's catalogs; nothing is generated until one of them is loaded.

    ``root`` defaults to :func:`default_dataset_root` as resolved now. Registering the same
    name again with the same arguments is a no-op; with different ones, a ``ValueError``.
    """
    spec = SyntheticSpec(num_images, image_size, seed, split, profile)
    root_path = Path(root).expanduser() if root is not None else default_dataset_root()
    if name in _REGISTERED and _REGISTERED[name] == (spec, root_path):
        return
    taken = [n for n in (name + s for s in TASK_SUFFIXES) if n in DatasetCatalog.list()]
    if taken:
        raise ValueError(f"Dataset {taken[0]!r} is already registered with other arguments")
    final_dir = synthetic_dataset_dir(root_path, *astuple(spec))
    image_root = str(final_dir / _IMAGES_DIR)

    def generate() -> tuple[Path, Path]:
        return generate_synthetic_coco(root_path, *astuple(spec))

    def load_instances() -> list[dict]:
        json_path, image_dir = generate()
        return load_coco_json(str(json_path), str(image_dir), name)

    def load_sem_seg() -> list[dict]:
        json_path, image_dir = generate()
        images = json.loads(json_path.read_text())["images"]
        return [
            {
                "file_name": str(image_dir / image["file_name"]),
                "sem_seg_file_name": str(final_dir / _SEM_SEG_DIR / _png(image["file_name"])),
                "height": image["height"],
                "width": image["width"],
                "image_id": image["id"],
            }
            for image in images
        ]

    def load_panoptic() -> list[dict]:
        generate()
        return load_coco_panoptic_json(
            str(final_dir / _PANOPTIC_FILE), image_root, str(final_dir / _PANOPTIC_DIR),
            MetadataCatalog.get(name + "_panoptic").as_dict(),
        )

    things = {
        "thing_classes": list(SHAPE_CLASSES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPE_CLASSES))},
    }
    DatasetCatalog.register(name, load_instances)
    MetadataCatalog.get(name).set(
        json_file=str(final_dir / _ANNOTATIONS_FILE), image_root=image_root, evaluator_type="coco", **things
    )
    DatasetCatalog.register(name + "_sem_seg", load_sem_seg)
    MetadataCatalog.get(name + "_sem_seg").set(
        stuff_classes=list(SEM_SEG_CLASSES),
        ignore_label=255,
        image_root=image_root,
        sem_seg_root=str(final_dir / _SEM_SEG_DIR),
        evaluator_type="sem_seg",
    )
    DatasetCatalog.register(name + "_panoptic", load_panoptic)
    MetadataCatalog.get(name + "_panoptic").set(
        stuff_classes=["background"],
        stuff_dataset_id_to_contiguous_id={BACKGROUND_CATEGORY_ID: 0},
        image_root=image_root,
        panoptic_root=str(final_dir / _PANOPTIC_DIR),
        panoptic_json=str(final_dir / _PANOPTIC_FILE),
        json_file=str(final_dir / _ANNOTATIONS_FILE),
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **things,
    )
    _REGISTERED[name] = (spec, root_path)


def register_default_synthetic_datasets(root: Optional[Union[str, Path]] = None) -> None:
    """Register :data:`DEFAULT_SYNTHETIC_DATASETS`, skipping names already registered."""
    for name, spec in DEFAULT_SYNTHETIC_DATASETS.items():
        if name not in DatasetCatalog.list():
            register_synthetic_dataset(
                name, spec.num_images, spec.image_size, spec.seed, root, spec.split, spec.profile
            )


def _generation_name(name: str) -> Optional[str]:
    """The name a generation was registered under, for any of its task names."""
    for suffix in sorted(TASK_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and name[: len(name) - len(suffix)] in _REGISTERED:
            return name[: len(name) - len(suffix)]
    return None


def is_synthetic_dataset(name: str) -> bool:
    """Whether ``name`` was registered by this module (its files appear on first use)."""
    return _generation_name(name) is not None


def ensure_generated(name: str) -> Optional[tuple[Path, Path]]:
    """Generate a registered synthetic dataset now; returns ``(json_path, image_dir)``.

    Call before building a ``COCOEvaluator``, which reads ``json_file`` directly. Names not
    registered by this module are left alone (returns None), so a training script may call
    it on every name in ``cfg.DATASETS``.
    """
    generation = _generation_name(name)
    if generation is None:
        return None
    spec, root = _REGISTERED[generation]
    return generate_synthetic_coco(root, *astuple(spec))


def _png(file_name: str) -> str:
    return Path(file_name).with_suffix(".png").name


def _write_dataset(
    out_dir: Path, num_images: int, image_size: int, seed: int, split: str, profile: str
) -> None:
    """Write images, semantic and panoptic PNGs, ``panoptic.json``, then ``annotations.json``
    into ``out_dir``."""
    for folder in (_IMAGES_DIR, _SEM_SEG_DIR, _PANOPTIC_DIR):
        (out_dir / folder).mkdir()
    split_key = zlib.crc32(split.encode())
    images, annotations, panoptic = [], [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_key, index]))
        pixels, objects, instance_map = render_image(rng, image_size, PROFILES[profile])
        file_name = f"{index:06d}.jpg"
        Image.fromarray(pixels).save(out_dir / _IMAGES_DIR / file_name, quality=95)
        Image.fromarray(semantic_map(objects, instance_map)).save(out_dir / _SEM_SEG_DIR / _png(file_name))
        panoptic_png, segments = panoptic_segments(objects, instance_map)
        Image.fromarray(panoptic_png).save(out_dir / _PANOPTIC_DIR / _png(file_name))
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for annotation in instance_annotations(objects, instance_map):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
        panoptic.append({"image_id": image_id, "file_name": _png(file_name), "segments_info": segments})
    info = {
        "description": "bifpn_d2 synthetic shapes",
        "version": _GENERATOR_VERSION,
        "split": split,
        "seed": seed,
        "profile": profile,
    }
    things = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]
    panoptic_categories = [dict(c, isthing=1) for c in things] + [
        {"id": BACKGROUND_CATEGORY_ID, "name": "background", "supercategory": "background", "isthing": 0}
    ]
    panoptic_json = {"info": info, "images": images, "annotations": panoptic,
                     "categories": panoptic_categories}
    (out_dir / _PANOPTIC_FILE).write_text(json.dumps(panoptic_json, separators=(",", ":")))
    coco = {"info": info, "images": images, "annotations": annotations, "categories": things}
    (out_dir / _ANNOTATIONS_FILE).write_text(json.dumps(coco, separators=(",", ":")))
