"""tools/train_net.py, tools/lazy_train_net.py, tools/main_job.py and tools/neck_study.py end
to end on the tiny
synthetic dataset (16 / 8 images of 128 px): training, evaluation, resuming, evaluating a
checkpoint, and the one-line errors for mistakes a user makes."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog

from bifpn_d2.data import TINY_OVERRIDES
from bifpn_d2.engine import (
    AtomicCheckpointer,
    ConfigError,
    Trainer,
    build_parser,
    lazy_preflight,
    load_config,
    preflight,
    run_cli,
)
from bifpn_d2.engine.config import build_checked_model
from bifpn_d2.layers import WeightedFusion

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/synthetic/RetinaNet-R18-BiFPN.yaml")
BASE_LR = 0.01
# The tiny dataset (16 / 8 images of 128 px), checkpoints every 2 iterations.
TINY = TINY_OVERRIDES + [
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.CHECKPOINT_PERIOD", "2",
]


def not_reached(args):
    raise AssertionError("the command should have been refused before launching")
TIMEOUT = 300


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: datasets generated under a temporary root, 2 threads."""
    return dict(os.environ, BIFPN_D2_DATASETS=str(tmp_path_factory.mktemp("datasets")), OMP_NUM_THREADS="2")


def run_tool(script: str, args, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def train(output_dir: Path, env, flags=(), iters: int = 4) -> subprocess.CompletedProcess:
    return run_tool(
        "train_net.py",
        [
            "--config-file",
            CONFIG,
            *flags,
            "OUTPUT_DIR",
            str(output_dir),
            *TINY,
            "SOLVER.MAX_ITER",
            str(iters),
        ],
        env,
    )


def metrics(output_dir: Path) -> list:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def digests(output_dir: Path) -> dict:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(output_dir.iterdir())
        if p.suffix == ".pth" or p.name == "last_checkpoint"
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """A finished 4-iteration run (checkpoints every 2 iterations), evaluated at the end."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    result = train(output_dir, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, result


def test_train_writes_checkpoints_metrics_and_events(trained):
    output_dir, result = trained
    names = {p.name for p in output_dir.iterdir()}
    assert {
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
        "last_checkpoint",
        "metrics.json",
        "log.txt",
        "config.yaml",
    } <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert not [n for n in names if n.endswith(".tmp")]  # atomic saves leave nothing behind
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    records = metrics(output_dir)
    assert [r["iteration"] for r in records if "total_loss" in r][-1] == 3
    assert "bbox/AP" in records[-1]
    assert "eta:" in result.stdout + result.stderr  # progress with an ETA, on CPU too
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in result.stdout + result.stderr


def test_resume_continues_iteration_optimizer_and_schedule(trained, tmp_path, env):
    output_dir = tmp_path / "out"
    shutil.copytree(trained[0], output_dir)
    before = len(metrics(output_dir))
    result = train(output_dir, env, ["--resume"], iters=6)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting training from iteration 4" in result.stdout + result.stderr
    new = [r for r in metrics(output_dir)[before:] if "total_loss" in r]
    assert [r["iteration"] for r in new] == [4, 5]
    # A restarted scheduler would be back in warmup (lr ~ BASE_LR / 1000); restored, it is not.
    assert new[0]["lr"] == pytest.approx(BASE_LR)
    checkpoint = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 5
    assert (
        "LRScheduler" in checkpoint["trainer"]["hooks"] and "optimizer" in checkpoint["trainer"]["_trainer"]
    )


def test_eval_only_from_checkpoint_leaves_checkpoints_alone(trained, tmp_path, env):
    output_dir = tmp_path / "out"
    shutil.copytree(trained[0], output_dir)
    saved = digests(output_dir)
    result = run_tool(
        "train_net.py",
        ["--config-file", CONFIG, "--eval-only", "--resume", "OUTPUT_DIR", str(output_dir), *TINY],
        env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in result.stdout + result.stderr
    assert digests(output_dir) == saved


def test_refuses_to_train_over_checkpoints(trained, capsys):
    output_dir = trained[0]
    saved = digests(output_dir)
    argv = ["--config-file", CONFIG, "OUTPUT_DIR", str(output_dir), *TINY]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv, preflight, not_reached)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "already holds checkpoints" in message and "--resume" in message and "--overwrite" in message
    assert digests(output_dir) == saved
    preflight(build_parser().parse_args(["--overwrite", *argv]))  # explicit override


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--config-file", CONFIG, "OUTPUT_DIR", str(blocker / "out")], preflight, not_reached)
    assert exit_info.value.code == 2
    assert f"OUTPUT_DIR '{blocker / 'out'}' is not writable" in capsys.readouterr().err


def test_unknown_key_is_one_line_naming_the_key(tmp_path, env):
    result = run_tool(
        "train_net.py",
        ["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.BIFPN.NUM_CELL", "3"],
        env,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        "error: unknown config key MODEL.BIFPN.NUM_CELL on the command line; "
        "did you mean MODEL.BIFPN.NUM_CELLS"  # closest first; a few more may follow
    ) in result.stderr


@pytest.mark.parametrize(
    "opts, expected",
    [
        (
            ["SOLVER.MAX_ITER", "many"],
            "config key SOLVER.MAX_ITER on the command line expects a value of type int",
        ),
        (["MODEL.BIFPN.FUSE_TYPE", "bogus"],
         "cannot build the model: MODEL.BIFPN.FUSE_TYPE='bogus' is not valid"),
        (["MODEL.BIFPN.DENSE_CONV_LEVELS", "[5, 8]"],
         "cannot build the model: MODEL.BIFPN.DENSE_CONV_LEVELS=[5, 8] is not valid; [8] are not levels "
         "of the cell, P3-P5: allowed values: [3, 4, 5]"),
        (["MODEL.BIFPN.FUSION_LR_FACTOR", "0"],
         "MODEL.BIFPN.FUSION_LR_FACTOR=0.0 is not valid; it must be > 0"),
        (["MODEL.BIFPN.WARMUP_ITERS", "-2"],
         "MODEL.BIFPN.WARMUP_ITERS=-2 is not valid; it must be an iteration count >= 0, or -1 for the "
         "solver's"),
        (["MODEL.BIFPN.FUSION", "sum"],
         "cannot build the model: MODEL.BIFPN.FUSION was renamed MODEL.BIFPN.FUSE_TYPE"),
        (["SOLVER.MAX_ITER"], "overrides must be KEY VALUE pairs"),
    ],
)
def test_bad_values_are_reported(tmp_path, capsys, opts, expected):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), *TINY, *opts], preflight,
                not_reached)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def refused(argv, capsys) -> str:
    """The one-line error ``run_cli`` gives for ``argv`` (exit status 2), checking that the
    run was stopped before launching and that nothing was written into OUTPUT_DIR."""
    output_dir = Path(argv[argv.index("OUTPUT_DIR") + 1])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv, preflight, not_reached)
    assert exit_info.value.code == 2
    assert not output_dir.exists()
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "error: " in message and "Traceback" not in message
    return message


def test_corrupt_weights_are_one_line(tmp_path, capsys):
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    message = refused(["--config-file", CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path / "out"),
                       "MODEL.WEIGHTS", str(weights), *TINY], capsys)
    assert f"MODEL.WEIGHTS: weight file '{weights}' is not a readable checkpoint" in message
    assert "weights_only" not in message  # torch's advice to unpickle an unknown file
    assert "model_final.pth), or a model-zoo .pkl" in message  # what to do


def test_model_zoo_pkl_weights_pass_the_check(tmp_path):
    """Detectron2's model-zoo .pkl files (pickles of numpy arrays) are read safely and let through."""
    weights = tmp_path / "R-50.pkl"
    arrays = {"stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
    with open(weights, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "model zoo"}, f)
    preflight(build_parser().parse_args(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out"),
                                         "MODEL.WEIGHTS", str(weights), *TINY]))


def test_missing_coco_names_the_file_and_detectron2_datasets(tmp_path, capsys):
    if os.path.exists(MetadataCatalog.get("coco_2017_train").json_file):
        pytest.skip("COCO is on disk here")
    message = refused(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), *TINY,
                       "DATASETS.TRAIN", "('coco_2017_train',)"], capsys)
    assert "DATASETS.TRAIN 'coco_2017_train' reads " in message
    assert "coco/annotations/instances_train2017.json (json_file), which does not exist" in message
    assert "set DETECTRON2_DATASETS to the folder that holds the dataset" in message


def test_unregistered_dataset(tmp_path, capsys):
    message = refused(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), *TINY,
                       "DATASETS.TEST", "('synthetic_shapes_vall',)"], capsys)
    assert "DATASETS.TEST names 'synthetic_shapes_vall', which is not a registered dataset; did you " \
           "mean synthetic_shapes_val" in message


@pytest.mark.parametrize(
    "opts, expected",
    [
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH 0 is not valid: the number of images per "
                                        "iteration must be >= 1; e.g. `SOLVER.IMS_PER_BATCH 2`"),
        (["--num-gpus", "2", "SOLVER.IMS_PER_BATCH", "3"], "must be a positive multiple of 2"),
        (["--num-gpus", "2", "MODEL.BIFPN.NORM", "SyncBN"], "MODEL.BIFPN.NORM is SyncBN (PyTorch's "
                                                            "SyncBatchNorm), which needs GPUs"),
    ],
    ids=["batch-0", "batch-not-divisible", "syncbn-on-cpu-processes"],
)
def test_batch_and_processes(tmp_path, capsys, opts, expected):
    if "--num-gpus" in opts and torch.cuda.is_available():
        pytest.skip("about CPU processes")
    flags = opts[:2] if opts[0] == "--num-gpus" else []
    message = refused(["--config-file", CONFIG, *flags, "OUTPUT_DIR", str(tmp_path / "out"), *TINY,
                       *opts[len(flags):]], capsys)
    assert expected in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="--num-gpus on a machine without GPUs")
def test_num_gpus_without_gpus_trains_cpu_processes(tmp_path, env):
    """--num-gpus 2 without GPUs: 2 CPU processes over gloo (Detectron2's launch and DDP)."""
    output_dir = tmp_path / "out"
    result = train(output_dir, env, flags=["--num-gpus", "2"], iters=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "World size: 2" in result.stdout + result.stderr
    assert (output_dir / "model_final.pth").is_file() and (output_dir / "log.txt.rank1").is_file()
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in result.stdout + result.stderr


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  BIFPN:\n    OUT_CHANNEL: 64\n')
    with pytest.raises(ConfigError, match=f"unknown config key MODEL.BIFPN.OUT_CHANNEL in {config}"):
        load_config(str(config))


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("model_final")
    saved = digests(tmp_path)

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final")
    assert digests(tmp_path) == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def test_lazy_train_net_trains_and_evaluates(tmp_path, env):
    output_dir = tmp_path / "lazy"
    result = run_tool(
        "lazy_train_net.py",
        [
            "--config-file",
            str(ROOT / "configs/lazy/EfficientDet-D0.py"),
            f"train.output_dir={output_dir}",
            "train.device=cpu",
            "train.max_iter=2",
            "model.num_classes=5",
            "dataloader.train.dataset.names=synthetic_shapes_tiny_train",
            "dataloader.test.dataset.names=synthetic_shapes_tiny_val",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
            "dataloader.train.mapper.augmentations.0.max_size=128",
            "dataloader.test.mapper.augmentations.0.short_edge_length=128",
            "dataloader.test.mapper.augmentations.0.max_size=128",
            "train.model_ema.enabled=True",
            "train.model_ema.decay=0.5",
        ],
        env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (output_dir / "model_final.pth").is_file() and (output_dir / "metrics.json").is_file()
    saved = torch.load(output_dir / "model_final.pth", weights_only=False)
    ema = {k[len("module."):]: v for k, v in saved["ema"].items()}  # the weight EMA is in the checkpoint
    assert ema.keys() == saved["model"].keys()
    assert any(not torch.equal(ema[k], saved["model"][k]) for k in ema if ema[k].is_floating_point())
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in result.stdout + result.stderr


def test_lazy_unknown_key(capsys):
    with pytest.raises(SystemExit):
        run_cli(["--config-file", str(ROOT / "configs/lazy/EfficientDet-D0.py"), "train.max_iters=5"],
                lazy_preflight, not_reached)
    assert "unknown config key train.max_iters" in capsys.readouterr().err


def test_main_job_quick(tmp_path, env):
    output_dir = tmp_path / "main_job"
    result = run_tool("main_job.py", ["--quick", "--output-dir", str(output_dir)], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (output_dir / "results.md").read_text()
    assert "| AP |" in table and "| GFLOPs" in table and table.split("\n\n")[1] in result.stdout
    rows = (output_dir / "results.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["model", "FPN", "BiFPN"]
    assert (output_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[FPN]" in result.stdout and "eta:" in result.stdout  # live progress


def test_neck_study_quick(tmp_path, env):
    """Arms by pair/name, two seeds each, side by side, a detection pair and the semantic
    pair (its own datasets): the table, its CSV and the plot; a second call reuses every
    finished run; --report-only with a group tabulates the finished runs of that group,
    training none."""
    output_dir = tmp_path / "study"
    arms = ["retinanet/fpn", "retinanet/candidate", "semantic_fpn/plain"]
    args = ["--quick", "--arms", *arms, "--seeds", "0", "1", "--jobs", "2", "--output-dir", str(output_dir)]
    result = run_tool("neck_study.py", args, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_csv_rows(output_dir / "neck_study.csv")
    assert [f"{r['pair']}/{r['arm']}" for r in rows] == arms
    assert [r["metric"] for r in rows] == ["bbox/AP", "bbox/AP", "sem_seg/mIoU"]
    assert all(r["seeds"] == "0 1" and float(r["GFLOPs"]) > 0 for r in rows)
    assert rows[1]["wins"] == "no" and not rows[0]["wins"]  # tiny runs win nothing; the FPN is the reference
    assert (output_dir / "neck_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output_dir / "semantic_fpn" / "plain" / "seed1" / "metrics.json").is_file()
    again = run_tool("neck_study.py", args, env)
    assert again.returncode == 0 and again.stdout.count("done before, reusing") == 6
    report_args = ["--quick", "--arms", "reference", "--seeds", "0", "1", "--report-only"]
    report = run_tool("neck_study.py", report_args + ["--output-dir", str(output_dir)], env)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert "start " not in report.stdout
    assert [r["arm"] for r in read_csv_rows(output_dir / "neck_study.csv")] == ["fpn", "candidate"]
    # --pool: the tables of seed 0 and of seed 1 pooled give the table of seeds 0 1 (--arms: those rows)
    for seed in ("0", "1"):
        one = ["--quick", "--arms", *arms, "--seeds", seed, "--report-only", "--output-dir", str(output_dir)]
        assert run_tool("neck_study.py", one, env).returncode == 0
        shutil.copy(output_dir / "neck_study.csv", tmp_path / f"seed{seed}.csv")
    tables = [str(tmp_path / f"seed{seed}.csv") for seed in ("0", "1")]
    pool_args = ["--pool", *tables, "--arms", "retinanet/fpn", "candidate"]
    pool_args += ["--output-dir", str(tmp_path / "pooled")]
    pooled = run_tool("neck_study.py", pool_args, env)
    assert pooled.returncode == 0, pooled.stdout[-3000:] + pooled.stderr[-3000:]
    pooled_rows = read_csv_rows(tmp_path / "pooled" / "neck_study.csv")
    assert [r["arm"] for r in pooled_rows] == ["fpn", "candidate"]
    for got, want in zip(pooled_rows, rows):
        assert got["seeds"] == "0 1" and got["val per seed"] == want["val per seed"]
        assert float(got["val sd"]) == pytest.approx(float(want["val sd"]), nan_ok=True)
        difference = float(want["transfer_small - fpn"])
        assert float(got["transfer_small - fpn"]) == pytest.approx(difference, nan_ok=True)
    twice = run_tool("neck_study.py", ["--pool", tables[0], tables[0]], env)
    assert twice.returncode != 0 and "repeat" in twice.stderr and "Traceback" not in twice.stderr
    lines = Path(tables[0]).read_text().splitlines()
    (tmp_path / "cut.csv").write_text("\n".join(lines[:1] + [lines[1][:40]]) + "\n")
    not_a_number = lines[1].replace("bbox/AP,0,", "bbox/AP,0,x", 1)  # its dev AP
    (tmp_path / "nan.csv").write_text("\n".join(lines[:1] + [not_a_number]) + "\n")
    for bad, says in (("cut.csv", "fewer fields"), ("nan.csv", "could not convert")):
        answer = run_tool("neck_study.py", ["--pool", str(tmp_path / bad)], env)
        assert answer.returncode != 0 and says in answer.stderr and "Traceback" not in answer.stderr, bad


def read_csv_rows(path: Path) -> list:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("neck, fusion", [(3.0, 1.0), (1.0, 10.0), (2.0, 5.0)])
def test_neck_lr_factor(neck, fusion):
    """MODEL.BIFPN.LR_FACTOR scales the learning rate of the BiFPN's parameters only, and
    MODEL.BIFPN.FUSION_LR_FACTOR that of its fusion weights on top."""
    cfg = load_config(CONFIG, TINY + ["MODEL.BIFPN.LR_FACTOR", str(neck), "MODEL.BIFPN.FUSION_LR_FACTOR",
                                      str(fusion)])
    model = build_checked_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    fusion_weights = 0
    for name, p in model.named_parameters():
        in_neck = name.startswith("backbone.") and not name.startswith("backbone.bottom_up.")
        is_fusion = in_neck and name.endswith(".fusion.weight")
        fusion_weights += is_fusion
        expected = BASE_LR * (neck * fusion if is_fusion else neck if in_neck else 1.0)
        assert lr_of[id(p)] == pytest.approx(expected), name
    assert fusion_weights == sum(isinstance(m, WeightedFusion) for m in model.backbone.cells.modules()) > 0


def _lr_per_iteration(cfg, model, iterations: int):
    """{parameter name: [its learning rate at iterations 0, 1, ...]} under ``Trainer``'s
    optimizer and scheduler for ``cfg``."""
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    rates = {name: [] for name, _ in model.named_parameters()}
    for _ in range(iterations):
        for name, p in model.named_parameters():
            rates[name].append(group_of[id(p)]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("neck_warmup", [0, 6])
def test_the_neck_warms_up_over_its_own_iterations(neck_warmup):
    """With MODEL.BIFPN.WARMUP_ITERS >= 0 the neck's parameters warm up over that many
    iterations (0: none) and every other parameter over SOLVER.WARMUP_ITERS, with the
    same steps after; -1 (the default) keeps one warmup for all."""
    opts = TINY + ["SOLVER.WARMUP_ITERS", "3", "SOLVER.MAX_ITER", "10", "SOLVER.STEPS", "(8,)",
                   "MODEL.BIFPN.LR_FACTOR", "2.0"]
    cfg = load_config(CONFIG, opts + ["MODEL.BIFPN.WARMUP_ITERS", str(neck_warmup)])
    model = build_checked_model(cfg)
    rates = _lr_per_iteration(cfg, model, 10)
    solver_rates = _lr_per_iteration(load_config(CONFIG, opts), model, 10)
    neck_names = [name for name in rates if name.startswith("backbone.") and "bottom_up" not in name]
    assert neck_names and len(neck_names) < len(rates)
    factor = cfg.SOLVER.WARMUP_FACTOR
    for name, lrs in rates.items():
        if name not in neck_names:
            assert lrs == pytest.approx(solver_rates[name]), name  # the solver's warmup, unchanged
            continue
        full = 2.0 * BASE_LR  # LR_FACTOR 2
        warming = [factor + (1 - factor) * t / neck_warmup for t in range(neck_warmup)]
        expected = [full * w for w in (warming + [1.0] * 8)[:8]]
        assert lrs[:8] == pytest.approx(expected), name
        assert lrs[8:] == pytest.approx([full * cfg.SOLVER.GAMMA] * 2), name  # the solver's step
        assert lrs[:3] != pytest.approx(solver_rates[name][:3]), name


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config-file", "EfficientDet/EfficientDet-D0.yaml", "MODEL.DEVICE", "cpu"],
         "is not an FPN to switch; FPN backbones: ['build_efficientnet_weighted_fpn_backbone'"),
        (["--config-file", "synthetic/RetinaNet-R18-FPN.yaml", "DATASETS.TRAIN", "('my_train',)"],
         "DATASETS.TRAIN names 'my_train', which is not a registered dataset"),
        (["--config-file", "synthetic/RetinaNet-R18-FPN.yaml", "--seeds"], "expected at least one argument"),
        (["--config-file", "synthetic/RetinaNet-R18-FPN.yaml", "MODEL.BIFPN.NUM_CELLS", "0"],
         "MODEL.BIFPN.NUM_CELLS=0 is not valid"),
    ],
)
def test_compare_necks_refuses_bad_input_before_training(args, expected, tmp_path, env):
    """A config without an FPN, a dataset that is not registered, a bad option or value:
    one line, exit status 2, nothing trained or written."""
    output_dir = tmp_path / "compare"
    result = run_tool("compare_necks.py", ["--output-dir", str(output_dir), *args], env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "start " not in result.stdout and not output_dir.exists()


def _bad_image(path: Path) -> str:
    path.write_bytes(b"\xff\xd8 not a jpeg" + bytes(range(256)))
    return str(path)


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("train_net.py", ["SOLVER.BASE_LR", "-1"], "SOLVER.BASE_LR=-1.0 is not valid; it must be > 0"),
        ("train_net.py", ["INPUT.MIN_SIZE_TRAIN", "(0,)"], "INPUT.MIN_SIZE_TRAIN=(0,) is not valid"),
        ("train_net.py", ["MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "1.5"],
         "MODEL_EMA.DECAY=1.5 is not valid; it must lie in (0, 1)"),
        ("train_net.py", ["INPUT.SCALE_JITTER", "(2.0, 0.1)"], "INPUT.SCALE_JITTER=(2.0, 0.1) is not valid"),
        ("train_net.py", ["SOLVER.AMP.ENABLED", "True"], "SOLVER.AMP.ENABLED True needs a CUDA GPU"),
        ("lazy_train_net.py", ["train.device=cpu", "model.backbone.bogus=3"],
         "unknown config key model.backbone.bogus on the command line: BiFPN takes no argument 'bogus'"),
        ("demo.py", ["--input", "BAD_IMAGE", "--opts", "MODEL.DEVICE", "cpu"], "is not a readable image"),
    ],
    ids=["base-lr", "min-size", "ema-decay", "scale-jitter", "amp-on-cpu", "lazy-argument", "demo-image"],
)
def test_tools_refuse_bad_input_in_one_line(script, args, expected, tmp_path, env):
    """Run as a user does: exit status 2, one line that names the input, nothing written."""
    output_dir = tmp_path / "out"
    args = [_bad_image(tmp_path / "bad.jpg") if a == "BAD_IMAGE" else a for a in args]
    if script == "lazy_train_net.py":
        argv = ["--config-file", str(ROOT / "configs/lazy/EfficientDet-D0.py"), *args,
                f"train.output_dir={output_dir}"]
    elif script == "demo.py":
        argv = ["--config-file", CONFIG, "--output", str(output_dir), *args]
    else:
        argv = ["--config-file", CONFIG, "OUTPUT_DIR", str(output_dir), *TINY, *args]
    result = run_tool(script, argv, env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr
    assert not output_dir.exists()
