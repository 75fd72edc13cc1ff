"""Pictures with Detectron2's ``Visualizer``: a model's predictions on image files (the
demo), and the ground truth of a registered dataset, as read from its annotations or as the
training data loader delivers it (after augmentation).

Images are ``(H, W, 3)`` uint8 arrays in RGB order unless a name says otherwise. Class names
come from the dataset's ``MetadataCatalog`` entry. Detectron2's ``Visualizer`` imports
OpenCV; without it, drawing raises a :class:`ConfigError` that says what to install.
"""

import glob
import itertools
import logging
import math
import os
import time
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.engine import DefaultPredictor
from PIL import Image

from ..data import ensure_generated
from .config import ConfigError

__all__ = [
    "dataset_pictures",
    "draw_predictions",
    "expand_inputs",
    "mosaic",
    "output_paths",
    "run_demo",
    "save_image",
    "set_confidence_threshold",
]

logger = logging.getLogger(__name__)
SOURCES = ("annotation", "dataloader")


def _visualizer(image: np.ndarray, metadata):
    """Detectron2's ``Visualizer`` over ``image`` (RGB), colours kept (``ColorMode.IMAGE``)."""
    try:
        from detectron2.utils.visualizer import ColorMode, Visualizer
    except ImportError as e:
        raise ConfigError(
            f"drawing needs OpenCV, which Detectron2's Visualizer imports ({e}): "
            "pip install opencv-python-headless (or bifpn_d2[demo])"
        ) from None
    return Visualizer(image, metadata, instance_mode=ColorMode.IMAGE)


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """The image files named by ``patterns``: paths, or glob patterns (``"images/*.jpg"``,
    quoted so that the shell leaves them alone), in order.

    Raises:
        ConfigError: a path that is not a file, or a pattern matching nothing.
    """
    files: List[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.isfile(m) for m in matches):
            raise ConfigError(f"--input {pattern!r}: no such image file")
        files += matches
    return files


def output_paths(inputs: Sequence[str], output: str) -> List[str]:
    """Where the picture of each input goes: ``output`` itself for a single input, unless
    it is a folder (exists, or ends with ``/``); else ``output/<input file name>``.

    Raises:
        ConfigError: two inputs with the same file name would overwrite each other.
    """
    if len(inputs) == 1 and not (os.path.isdir(output) or output.endswith(os.sep)):
        return [output]
    names = [os.path.basename(p) for p in inputs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"several inputs are named {repeated[0]!r}; their pictures would collide")
    return [os.path.join(output, name) for name in names]


def set_confidence_threshold(cfg: CfgNode, threshold: float) -> None:
    """Keep only detections scoring at least ``threshold`` (0-1), in every head that has a
    test-time score threshold (RetinaNet, R-CNN box heads, Panoptic FPN's instances)."""
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold


def draw_predictions(image: np.ndarray, predictions: dict, metadata) -> np.ndarray:
    """``image`` (RGB) with a model's outputs drawn: panoptic segments, or the semantic
    segmentation and the instances (boxes, class names, scores, masks if predicted)."""
    visualizer = _visualizer(image, metadata)
    drawn = None
    if "panoptic_seg" in predictions:
        segments, info = predictions["panoptic_seg"]
        drawn = visualizer.draw_panoptic_seg(segments.to("cpu"), info)
    else:
        if "sem_seg" in predictions:
            drawn = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
        if "instances" in predictions:
            drawn = visualizer.draw_instance_predictions(predictions["instances"].to("cpu"))
    if drawn is None:
        raise ValueError(f"nothing to draw in the model's outputs {sorted(predictions)}")
    return drawn.get_image()


def save_image(image: np.ndarray, path: str) -> str:
    """Write ``image`` (RGB) to ``path`` (format from the extension); returns ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def check_images(paths: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming the first of ``paths`` that is not a readable
    image (decoded in full, so a truncated file is caught too)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError
            raise ConfigError(f"--input {path!r} is not a readable image ({type(e).__name__}: {e}); "
                              "give JPEG/PNG files, folders or glob patterns of them") from None


def run_demo(cfg: CfgNode, inputs: Sequence[str], output: str) -> List[str]:
    """Run the model of ``cfg`` (weights: ``MODEL.WEIGHTS``; random if empty) on each image
    file with Detectron2's ``DefaultPredictor`` (test-time resize, ``INPUT.FORMAT``) and
    write it with the predictions drawn (see :func:`output_paths`). Class names come from
    the metadata of ``DATASETS.TEST[0]``. Returns the files written.

    Raises:
        ConfigError: an input that is not a readable image (checked before any output).
    """
    paths = output_paths(inputs, output)
    check_images(inputs)  # every input, before anything is written
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: these are the predictions of a randomly initialised model")
    predictor = DefaultPredictor(cfg)
    for path, out in zip(inputs, paths):
        image = read_image(path, format="BGR")  # DefaultPredictor's convention
        start = time.perf_counter()
        predictions = predictor(image)
        found = len(predictions["instances"]) if "instances" in predictions else "segments"
        logger.info(f"{path}: {found} detected in {time.perf_counter() - start:.2f} s -> {out}")
        save_image(draw_predictions(image[:, :, ::-1], predictions, metadata), out)
    return paths


def dataset_pictures(cfg: CfgNode, source: str, num_images: int) -> Iterator[Tuple[str, np.ndarray]]:
    """``(name, picture)`` of the first ``num_images`` images of ``cfg.DATASETS.TRAIN`` with
    their ground truth drawn, as ``source`` gives them: ``"annotation"`` (the dataset's
    records, original images) or ``"dataloader"`` (what the training loader delivers,
    after resizing and augmentation, ``DATALOADER.NUM_WORKERS`` workers).

    Raises:
        ConfigError: no training dataset, or an unknown ``source``.
    """
    if source not in SOURCES:
        raise ConfigError(f"source {source!r} is not one of {list(SOURCES)}")
    if not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: no dataset to draw")
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    if source == "annotation":
        records = itertools.chain.from_iterable(DatasetCatalog.get(name) for name in cfg.DATASETS.TRAIN)
        for record in itertools.islice(records, num_images):
            image = read_image(record["file_name"], format="RGB")
            drawn = _visualizer(image, metadata).draw_dataset_dict(record)
            yield os.path.basename(record["file_name"]), drawn.get_image()
        return
    for name in cfg.DATASETS.TRAIN:
        ensure_generated(name)  # once here, not in every loader worker
    items = itertools.chain.from_iterable(build_detection_train_loader(cfg))  # endless
    for index, item in enumerate(itertools.islice(items, num_images)):
        image = convert_image_to_rgb(item["image"].permute(1, 2, 0).numpy(), cfg.INPUT.FORMAT)
        yield f"{index:04d}_{item['image_id']}.jpg", _draw_targets(image, item["instances"], metadata)


def _draw_targets(image: np.ndarray, instances, metadata) -> np.ndarray:
    """Ground-truth boxes, class names, masks and keypoints of a data loader's instances."""
    names = metadata.get("thing_classes", None)
    classes = instances.gt_classes.tolist() if instances.has("gt_classes") else []
    labels = [names[c] if names else str(c) for c in classes]
    fields = instances.get_fields()
    drawn = _visualizer(image, metadata).overlay_instances(
        labels=labels,
        boxes=fields.get("gt_boxes"),
        masks=fields.get("gt_masks"),
        keypoints=fields.get("gt_keypoints"),
    )
    return drawn.get_image()


def mosaic(images: Sequence[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
    """The images in a grid, ``columns`` wide, each cell as large as the largest image,
    separated by ``gap`` white pixels."""
    if not images:
        raise ValueError("no images for the mosaic")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    height = max(i.shape[0] for i in images) + gap
    width = max(i.shape[1] for i in images) + gap
    grid = np.full((rows * height - gap, columns * width - gap, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * height, (index % columns) * width
        grid[top : top + image.shape[0], left : left + image.shape[1]] = image
    return grid

