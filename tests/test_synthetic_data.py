"""The synthetic shapes dataset: determinism, COCO validity, size spread, catalog, atomicity."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools.coco import COCO

import bifpn_d2.data.synthetic as synthetic
from bifpn_d2.data import (
    DATASET_ROOT_ENV,
    DEFAULT_SYNTHETIC_DATASETS,
    SHAPE_CLASSES,
    default_dataset_root,
    ensure_generated,
    generate_synthetic_coco,
    register_synthetic_dataset,
    synthetic_dataset_dir,
)


def _image_pixels(image_dir: Path) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(image_dir.iterdir())}


def test_same_seed_gives_identical_files(tmp_path):
    json_a, images_a = generate_synthetic_coco(tmp_path / "a", 6, 96, seed=3)
    json_b, images_b = generate_synthetic_coco(tmp_path / "b", 6, 96, seed=3)
    assert json_a.read_bytes() == json_b.read_bytes()
    names = sorted(p.name for p in images_a.iterdir())
    assert names == sorted(p.name for p in images_b.iterdir()) and len(names) == 6
    for name in names:
        assert (images_a / name).read_bytes() == (images_b / name).read_bytes()


def test_seed_and_split_change_the_data(tmp_path):
    json_0, images_0 = generate_synthetic_coco(tmp_path, 3, 96, seed=0)
    json_1, images_1 = generate_synthetic_coco(tmp_path, 3, 96, seed=1)
    json_val, images_val = generate_synthetic_coco(tmp_path, 3, 96, seed=0, split="val")
    assert len({json_0.parent, json_1.parent, json_val.parent}) == 3
    annotations = [json.loads(p.read_text())["annotations"] for p in (json_0, json_1, json_val)]
    assert annotations[0] != annotations[1] and annotations[0] != annotations[2]
    pixels = [_image_pixels(d)["000000.jpg"] for d in (images_0, images_1, images_val)]
    assert not np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_coco_annotations_are_valid(tmp_path):
    json_path, image_dir = generate_synthetic_coco(tmp_path, 8, 128, seed=0)
    coco = COCO(str(json_path))
    assert len(coco.getImgIds()) == 8
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    raw = json.loads(json_path.read_text())
    assert len(coco.getAnnIds()) == len(raw["annotations"]) >= 8
    assert len({a["id"] for a in raw["annotations"]}) == len(raw["annotations"])
    for image in coco.loadImgs(coco.getImgIds()):
        with Image.open(image_dir / image["file_name"]) as pil:
            assert pil.size == (image["width"], image["height"]) == (128, 128)
            assert pil.mode == "RGB"
        assert coco.getAnnIds(imgIds=image["id"]), "every image has at least one object"
    for ann in raw["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1
        assert x + w <= 128 and y + h <= 128
        assert 0 < ann["area"] <= w * h
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(SHAPE_CLASSES)


def test_object_sizes_span_coco_ranges(tmp_path):
    json_path, _ = generate_synthetic_coco(tmp_path, 24, 320, seed=0)
    annotations = json.loads(json_path.read_text())["annotations"]
    areas = np.array([a["area"] for a in annotations])
    sides = np.array([max(a["bbox"][2:]) for a in annotations])
    assert (areas < 32**2).sum() >= 10
    assert ((areas >= 32**2) & (areas <= 96**2)).sum() >= 10
    assert (areas > 96**2).sum() >= 5
    assert sides.max() / sides.min() >= 16
    assert len({a["category_id"] for a in annotations}) == len(SHAPE_CLASSES)


def test_registered_dataset_loads_lazily(tmp_path):
    name = "test_synthetic_shapes_catalog"
    register_synthetic_dataset(name, 5, 96, seed=2, root=tmp_path, split="val")
    register_synthetic_dataset(name, 5, 96, seed=2, root=tmp_path, split="val")  # no-op
    with pytest.raises(ValueError):
        register_synthetic_dataset(name, 6, 96, seed=2, root=tmp_path, split="val")
    assert not any(tmp_path.iterdir()), "registration must not generate anything"

    metadata = MetadataCatalog.get(name)
    expected_dir = synthetic_dataset_dir(tmp_path, 5, 96, 2, "val")
    assert metadata.json_file == str(expected_dir / "annotations.json")
    assert metadata.image_root == str(expected_dir / "images")
    assert metadata.evaluator_type == "coco"
    assert metadata.thing_classes == list(SHAPE_CLASSES)

    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 5 and Path(metadata.json_file).is_file()
    for record in dicts:
        assert (record["height"], record["width"]) == (96, 96)
        assert Path(record["file_name"]).is_file()
        assert record["annotations"]
        for ann in record["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(SHAPE_CLASSES)
    assert ensure_generated(name) == (Path(metadata.json_file), Path(metadata.image_root))
    assert ensure_generated("coco_2017_val") is None


def test_default_names_and_root(monkeypatch, tmp_path):
    assert set(DEFAULT_SYNTHETIC_DATASETS) <= set(DatasetCatalog.list())
    monkeypatch.setenv(DATASET_ROOT_ENV, str(tmp_path))
    assert default_dataset_root() == tmp_path
    monkeypatch.delenv(DATASET_ROOT_ENV)
    assert default_dataset_root() == Path.home() / ".cache" / "bifpn_d2" / "datasets"


def test_existing_generation_is_reused(tmp_path, monkeypatch):
    json_path, _ = generate_synthetic_coco(tmp_path, 2, 96, seed=0)
    stamp = json_path.stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    assert generate_synthetic_coco(tmp_path, 2, 96, seed=0)[0] == json_path
    assert json_path.stat().st_mtime_ns == stamp


def test_losing_the_race_keeps_the_winner(tmp_path, monkeypatch):
    """Another process publishes the folder while we generate: ours is discarded, theirs kept."""
    write_dataset = synthetic._write_dataset
    winner_json = []

    def write_then_be_overtaken(out_dir, *args):
        write_dataset(out_dir, *args)
        monkeypatch.setattr(synthetic, "_write_dataset", write_dataset)
        winner_json.append(generate_synthetic_coco(tmp_path, 2, 96, seed=0)[0])

    monkeypatch.setattr(synthetic, "_write_dataset", write_then_be_overtaken)
    json_path, image_dir = generate_synthetic_coco(tmp_path, 2, 96, seed=0)
    assert winner_json == [json_path]
    assert os.listdir(tmp_path) == [json_path.parent.name], "temporary folder left behind"
    assert len(list(image_dir.iterdir())) == 2


def test_concurrent_generation(tmp_path):
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: generate_synthetic_coco(tmp_path, 4, 96, 0), range(3)))
    assert len(set(results)) == 1
    assert os.listdir(tmp_path) == [results[0][0].parent.name]
    assert len(COCO(str(results[0][0])).getImgIds()) == 4


def test_images_and_boxes_unchanged_by_the_annotation_formats():
    """Generator 3 adds masks, semantic and panoptic files: the default profile's images and
    boxes are still those of generator 2 (digests taken from generator 2's output), so
    results measured on the detection splits keep their meaning."""
    import hashlib
    import zlib

    from bifpn_d2.data.shapes import render_image

    expected = {("val", 0): ("b74ca13a040a6f69", "27eb65db9a05b5be"),
                ("train", 5): ("e19d1da4606517e8", "ad7a27ef30441c3c")}
    for (split, index), (pixel_digest, object_digest) in expected.items():
        rng = np.random.default_rng(np.random.SeedSequence([0, zlib.crc32(split.encode()), index]))
        pixels, objects, _ = render_image(rng, 320)
        assert hashlib.sha256(pixels.tobytes()).hexdigest()[:16] == pixel_digest
        assert hashlib.sha256(json.dumps(objects).encode()).hexdigest()[:16] == object_digest


def test_masks_semantic_and_panoptic_agree_with_the_boxes(tmp_path):
    """Every object's RLE mask has the annotation's area and the box as its tight extent;
    the semantic map and the panoptic segments label exactly the same pixels."""
    from pycocotools import mask as mask_utils

    from bifpn_d2.data.annotations import BACKGROUND_CATEGORY_ID

    json_path, image_dir = generate_synthetic_coco(tmp_path, 4, 128, seed=1, profile="small_cluttered")
    folder = json_path.parent
    coco = json.loads(json_path.read_text())
    panoptic = {a["image_id"]: a for a in json.loads((folder / "panoptic.json").read_text())["annotations"]}
    checked = 0
    for image in coco["images"]:
        stem = Path(image["file_name"]).stem
        semantic = np.asarray(Image.open(folder / "sem_seg" / f"{stem}.png"))
        rgb = np.asarray(Image.open(folder / "panoptic" / f"{stem}.png")).astype(np.int64)
        segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        segments = {s["id"]: s for s in panoptic[image["id"]]["segments_info"]}
        objects = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        union = np.zeros(semantic.shape, dtype=bool)
        for k, annotation in enumerate(objects):
            mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
            ys, xs = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            assert mask.sum() == annotation["area"] > 0
            assert (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y) == (x, y, w, h)
            assert not (union & mask).any()  # visible pixels belong to one object
            union |= mask
            assert (semantic[mask] == annotation["category_id"]).all()
            segment = segments[k + 1]
            assert np.array_equal(segment_ids == k + 1, mask)
            assert (segment["category_id"], segment["area"], segment["bbox"]) == (
                annotation["category_id"], annotation["area"], annotation["bbox"])
            checked += 1
        assert (semantic[~union] == 0).all()
        background = [s for s in segments.values() if s["category_id"] == BACKGROUND_CATEGORY_ID]
        assert len(background) == 1 and background[0]["area"] == (~union).sum()
    assert checked >= 8


def test_splits_and_transfer_sets_are_distinct():
    """dev, val and the transfer sets are other images than the training split, and the
    transfer sets use other generator settings."""
    specs = DEFAULT_SYNTHETIC_DATASETS
    assert {"synthetic_shapes_dev", "synthetic_shapes_val"} <= set(specs)
    transfer = [s for name, s in specs.items() if "transfer" in name]
    assert len(transfer) >= 2 and all(s.profile != "default" for s in transfer)
    folders = {synthetic_dataset_dir("/r", *astuple(s)) for s in specs.values()}
    assert len(folders) == len(specs)
    for name in specs:
        for suffix in synthetic.TASK_SUFFIXES:
            assert name + suffix in DatasetCatalog.list()
    assert MetadataCatalog.get("synthetic_shapes_val_sem_seg").evaluator_type == "sem_seg"
    assert MetadataCatalog.get("synthetic_shapes_val_panoptic").evaluator_type == "coco_panoptic_seg"
