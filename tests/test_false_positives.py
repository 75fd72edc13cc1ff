"""The false-positive breakdown classes each detection as COCO's AP50 matching sees it."""
import csv
import json
import os
import subprocess
import sys

import pytest

from benchmarks.false_positives import classify_detections, false_positive_table


def _gt(box, category=1, area=None):
    return {"bbox": box, "category_id": category, "area": area if area is not None else box[2] * box[3],
            "image_id": 1, "iscrowd": 0}


def _det(box, score, category=1):
    return {"bbox": box, "score": score, "category_id": category, "image_id": 1}


def test_each_kind_of_detection():
    truth = [_gt([0, 0, 100, 100]), _gt([200, 200, 20, 20], area=2000.0), _gt([300, 0, 50, 50], category=2)]
    detections = [
        _det([0, 0, 98, 100], 0.6),     # duplicate: the box below, scored higher, takes the object
        _det([0, 0, 100, 100], 0.9),    # tp (large box, large object)
        _det([0, 0, 100, 30], 0.8),     # mislocalised: a third of the object (IoU 0.3)
        _det([200, 200, 20, 20], 0.7),  # tp_other: a small box, an object medium by its area
        _det([300, 0, 50, 50], 0.7),    # wrong_class
        _det([500, 500, 40, 40], 0.7),  # background
    ]
    assert classify_detections(detections, truth) == [
        "duplicate", "tp", "mislocalised", "tp_other", "wrong_class", "background"]


def test_table_counts_by_detection_box_and_score():
    coco = {"images": [{"id": 1}, {"id": 2}], "annotations": [_gt([0, 0, 100, 100])]}
    detections = [_det([0, 0, 100, 100], 0.9), _det([0, 0, 100, 30], 0.8), _det([0, 0, 30, 30], 0.2)]
    rows = {row["size"]: row for row in false_positive_table(detections, coco, min_score=0.5)}
    assert rows["large"]["boxes"] == 1 and rows["large"]["tp"] == 1
    assert rows["medium"]["mislocalised"] == 1  # 100 x 30: a medium box
    assert rows["small"]["mislocalised"] == 0  # scored below min_score
    assert rows["all"]["tp"] + rows["all"]["mislocalised"] == 2


def test_detection_on_an_unknown_image_is_an_error():
    coco = {"images": [{"id": 1}], "annotations": []}
    with pytest.raises(ValueError, match="image 7"):
        false_positive_table([dict(_det([0, 0, 1, 1], 0.9), image_id=7)], coco)


def _tool(*args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, os.path.join(root, "tools", "diagnose_false_positives.py"), *args],
                          cwd=root, capture_output=True, text=True, timeout=300)


def test_tool_reads_a_runs_saved_detections(tmp_path):
    """Every ground-truth box of the tiny split given back as a detection, one of them
    twice: the tool's table counts each as true and the copy as a duplicate."""
    from detectron2.data.datasets.coco import convert_to_coco_dict

    import bifpn_d2  # noqa: F401  (registers the built-in datasets)

    truth = convert_to_coco_dict("synthetic_shapes_tiny_val")
    detections = [dict(image_id=a["image_id"], bbox=a["bbox"], category_id=a["category_id"], score=0.9)
                  for a in truth["annotations"]]
    detections.append(dict(detections[0], score=0.8))
    results = tmp_path / "run" / "inference" / "synthetic_shapes_tiny_val" / "coco_instances_results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(detections))
    out = tmp_path / "out"
    result = _tool("--dataset", "synthetic_shapes_tiny_val", "--run", f"perfect={tmp_path / 'run'}",
                   "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    with open(out / "false_positives.csv") as f:
        rows = {row["size"]: row for row in csv.DictReader(f)}
    total = rows["all"]
    assert int(total["boxes"]) == len(truth["annotations"]) > 0
    assert int(total["tp"]) + int(total["tp_other"]) == len(truth["annotations"])
    assert int(total["duplicate"]) == 1
    assert int(total["mislocalised"]) == int(total["wrong_class"]) == int(total["background"]) == 0
    assert "| perfect | all |" in (out / "false_positives.md").read_text()


def test_tool_refuses_a_run_without_detections_in_one_line(tmp_path):
    result = _tool("--dataset", "synthetic_shapes_tiny_val", "--run", f"FPN={tmp_path}",
                   "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert f"--run FPN={tmp_path}: no " in last and "coco_instances_results.json" in last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, args, message", [
    ("[{\"image_id\": 0,", [], "is not valid JSON"),
    ("{\"image_id\": 0}", [], "is not a list of COCO detections"),
    ("[{\"image_id\": 0, \"score\": 0.9}]", [], "is not a list of COCO detections"),
    ("[{\"image_id\": 99999, \"bbox\": [0, 0, 1, 1], \"score\": 0.9, \"category_id\": 1}]", [],
     "which the ground truth does not have"),
    ("[]", ["--min-score", "1.5"], "--min-score must be in [0, 1], got 1.5"),
    ("[]", ["--dataset", "no_such_dataset"], "'no_such_dataset' is not registered"),
])
def test_tool_refuses_bad_input_in_one_line(tmp_path, content, args, message):
    """A corrupt or foreign results file, a score out of range, an unknown dataset: exit 2,
    one line naming the problem, nothing written."""
    results = tmp_path / "run" / "inference" / "synthetic_shapes_tiny_val" / "coco_instances_results.json"
    results.parent.mkdir(parents=True)
    results.write_text(content)
    result = _tool("--dataset", "synthetic_shapes_tiny_val", "--run", f"BiFPN={tmp_path / 'run'}",
                   "--output-dir", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
