"""Evaluators chosen from the dataset metadata as Detectron2's train_net chooses them, the
checks that refuse a training before it starts when a test dataset cannot be evaluated,
and test-time augmentation (TTA) after training."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from bifpn_d2.data import ensure_generated, register_synthetic_dataset
from bifpn_d2.engine import (
    EVALUATOR_TYPES,
    ConfigError,
    Trainer,
    build_evaluator,
    load_config,
    preflight,
    run_cli,
)
from bifpn_d2.engine import evaluation as evaluation_module
from bifpn_d2.engine.config import build_checked_model

RETINANET = "synthetic/RetinaNet-R18-BiFPN.yaml"
RCNN = "synthetic/FasterRCNN-R18-BiFPN.yaml"
SMALL = [
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
]
# evaluator_type -> metadata enough to construct its evaluators, and their class names.
FAKE = {
    "sem_seg": (dict(stuff_classes=["a", "b"], ignore_label=255), ["SemSegEvaluator"]),
    "pascal_voc": (dict(dirname="voc", split="val", year=2007, thing_classes=["a"]),
                   ["PascalVOCDetectionEvaluator"]),
    "cityscapes_instance": (dict(thing_classes=["a"], gt_dir="gt"), ["CityscapesInstanceEvaluator"]),
    "cityscapes_sem_seg": (dict(stuff_classes=["a"], gt_dir="gt"), ["CityscapesSemSegEvaluator"]),
}


def _register(name: str, **metadata) -> str:
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, list)
        MetadataCatalog.get(name).set(**metadata)
    return name


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Tiny synthetic train/test datasets (COCO evaluator type) under a temporary root."""
    root = tmp_path_factory.mktemp("datasets")
    for split, count in (("train", 4), ("val", 3)):
        register_synthetic_dataset(f"evaluation_test_{split}", count, 128, 0, root=root, split=split)
    datasets = ["DATASETS.TRAIN", "('evaluation_test_train',)", "DATASETS.TEST", "('evaluation_test_val',)"]
    return [*SMALL, *datasets]


def test_every_detectron2_evaluator_type_is_known():
    assert set(EVALUATOR_TYPES) == {
        "coco", "sem_seg", "coco_panoptic_seg", "lvis", "pascal_voc", "cityscapes_instance",
        "cityscapes_sem_seg",
    }
    assert len(EVALUATOR_TYPES["coco_panoptic_seg"]) == 3  # semantic, instances, panoptic


@pytest.mark.parametrize("evaluator_type", sorted(FAKE))
def test_evaluator_from_metadata(evaluator_type, tmp_path):
    metadata, expected = FAKE[evaluator_type]
    name = _register(f"evaluation_test_{evaluator_type}", evaluator_type=evaluator_type, **metadata)
    cfg = load_config(RETINANET, ["OUTPUT_DIR", str(tmp_path)])
    evaluator = build_evaluator(cfg, name)
    built = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    assert [type(e).__name__ for e in built] == expected


def test_coco_evaluator_for_the_synthetic_dataset(synthetic, tmp_path):
    cfg = load_config(RETINANET, [*synthetic, "OUTPUT_DIR", str(tmp_path)])
    assert type(Trainer.build_evaluator(cfg, "evaluation_test_val")).__name__ == "COCOEvaluator"


@pytest.mark.parametrize(
    "test_datasets, expected",
    [
        ("('evaluation_test_unknown_type',)", "no evaluator for test dataset 'evaluation_test_unknown_type'"),
        ("('not_registered',)", "DATASETS.TEST names 'not_registered', which is not a registered dataset"),
        ("('evaluation_test_lvis',)", "needs the package 'lvis', which is not installed (pip install lvis)"),
    ],
)
def test_training_refused_before_it_starts(test_datasets, expected, synthetic, tmp_path, capsys, monkeypatch):
    _register("evaluation_test_unknown_type", evaluator_type="kitti")
    _register("evaluation_test_lvis", evaluator_type="lvis")
    monkeypatch.setattr(evaluation_module, "_installed", lambda module: False)

    def not_reached(args):
        raise AssertionError("the training should have been refused before it started")

    argv = ["--config-file", RETINANET, "OUTPUT_DIR", str(tmp_path), *synthetic]
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*argv, "DATASETS.TEST", test_datasets], preflight, not_reached)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_tta_needs_an_rcnn_model(synthetic):
    cfg = load_config(RETINANET, [*synthetic, "TEST.AUG.ENABLED", "True"])
    expected = "needs MODEL.META_ARCHITECTURE GeneralizedRCNN; this config builds RetinaNet"
    with pytest.raises(ConfigError, match=expected):
        evaluation_module.check_evaluation(cfg, build_checked_model(cfg))


def test_training_then_tta(synthetic, tmp_path):
    """One iteration of Faster R-CNN, then the evaluation and the TTA evaluation (two
    sizes and flips); Trainer.evaluate (train_net --eval-only) gives both too."""
    opts = [*synthetic, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "1", "TEST.AUG.ENABLED", "True",
            "TEST.AUG.MIN_SIZES", "(64, 96)", "TEST.AUG.MAX_SIZE", "128"]
    cfg = load_config(RCNN, opts)
    evaluation_module.check_evaluation(cfg, build_checked_model(cfg))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert set(results) == {"bbox", "bbox_TTA"}, results
    assert (tmp_path / "inference_TTA" / "evaluation_test_val").is_dir()
    assert set(Trainer.evaluate(cfg, trainer.model)) == {"bbox", "bbox_TTA"}


def _ground_truth_as_predictions(name: str):
    """The tiny split's inputs, and each image's ground truth written as a model's output:
    instances (boxes, classes, masks, score 1), a semantic score map, panoptic segments."""
    import numpy as np
    import torch
    from detectron2.data import detection_utils
    from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
    from PIL import Image
    from pycocotools import mask as mask_utils

    instances_of = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    semantic_of = {d["image_id"]: d for d in DatasetCatalog.get(name + "_sem_seg")}
    for panoptic in DatasetCatalog.get(name + "_panoptic"):
        image_id = panoptic["image_id"]
        record = instances_of[image_id]
        h, w = record["height"], record["width"]
        annotations = record["annotations"]
        instances = Instances((h, w))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        instances.scores = torch.ones(len(annotations))
        masks = [mask_utils.decode(a["segmentation"]) for a in annotations]
        instances.pred_masks = BitMasks(torch.from_numpy(np.stack(masks)).bool()).tensor
        labels = np.asarray(Image.open(semantic_of[image_id]["sem_seg_file_name"]), dtype=np.int64)
        sem_seg = torch.nn.functional.one_hot(torch.from_numpy(labels), 6).permute(2, 0, 1).float()
        rgb = detection_utils.read_image(panoptic["pan_seg_file_name"], "RGB").astype(np.int64)
        segment_ids = torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2])
        segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                    for s in panoptic["segments_info"]]
        inputs = {"file_name": record["file_name"], "image_id": image_id, "height": h, "width": w}
        outputs = {"instances": instances, "sem_seg": sem_seg, "panoptic_seg": (segment_ids, segments)}
        yield inputs, outputs


def test_every_task_of_the_synthetic_dataset_evaluates(tmp_path):
    """Detectron2's evaluators run on a tiny split's instances (box and mask AP), semantic
    maps (mIoU) and panoptic segments (PQ): its ground truth, given as predictions, scores 100."""
    pytest.importorskip("panopticapi")
    from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator

    name = "evaluation_test_tasks"
    register_synthetic_dataset(name, 4, 128, 0, root=tmp_path / "datasets", split="val", profile="large")
    ensure_generated(name)  # COCOEvaluator reads the json file when it is built
    evaluators = {
        "coco": COCOEvaluator(name, tasks=("bbox", "segm"), output_dir=str(tmp_path / "coco")),
        "sem_seg": build_evaluator(load_config(RETINANET, ["OUTPUT_DIR", str(tmp_path)]), name + "_sem_seg"),
        "panoptic": COCOPanopticEvaluator(name + "_panoptic", str(tmp_path / "panoptic")),
    }
    for evaluator in evaluators.values():
        evaluator.reset()
    for inputs, outputs in _ground_truth_as_predictions(name):
        for evaluator in evaluators.values():
            evaluator.process([inputs], [outputs])
    results = {key: evaluator.evaluate() for key, evaluator in evaluators.items()}
    assert results["coco"]["bbox"]["AP"] == pytest.approx(100.0)
    assert results["coco"]["segm"]["AP"] == pytest.approx(100.0)
    assert results["sem_seg"]["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert results["panoptic"]["panoptic_seg"]["PQ"] == pytest.approx(100.0)
