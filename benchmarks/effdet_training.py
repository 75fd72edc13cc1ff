"""The same EfficientDet training twice, once with effdet's own training pieces and once with
ours, to prove that our recipe trains as effdet's does.

Both sides start from the same initial weights: an effdet model with effdet's random
initialisation, converted into ours by :func:`bifpn_d2.convert.convert_effdet_detector`.
Both see the same images in the same order with the same augmentation: the effdet side
draws its batches from the training loader of our ``Trainer`` built from the same config
after the same seeding as ``tools/train_net.py`` (Detectron2's ``default_setup``), in the
main process (``DATALOADER.NUM_WORKERS 0``, so that no worker seed depends on anything
else); the scale jitter, the crop, the flip and the sampler draw from the same generators
in the same order. Both follow the same schedule (Detectron2's warmup and cosine, the same
SGD parameter groups: no weight decay on norms).

- **effdet's side** (:func:`train_effdet`): effdet's ``DetBenchTrain`` (its anchor labeler,
  focal and box losses) in a plain loop, timm's ``dispatch_clip_grad`` (effdet's
  ``train.py`` clipping) and timm's ``ModelEmaV3`` updated after every step.
- **our side**: ``tools/train_net.py`` with the config, ``MODEL.WEIGHTS`` the converted
  initial weights.

Both are evaluated by the same Detectron2 COCO evaluator on the config's test set:
ours with its EMA weights (``tools/train_net.py``'s default), effdet's by converting its EMA
weights into our model, whose detections equal effdet's for equal weights
(``tests/test_efficientdet.py``). Each side leaves a Detectron2 output directory
(``metrics.json`` in Detectron2's format), so that :mod:`.comparison` reads both alike.
"""

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .comparison import ROOT, Run, mean_and_sd, run_all, summarize

__all__ = ["EFFDET_NAME", "EffdetRun", "compare_trainings", "effdet_target", "synthetic_overrides",
           "train_effdet", "write_initial_weights"]

EFFDET_NAME = "efficientdet_d0"  # effdet's PyTorch-padding D0: our EfficientDet-D0.yaml
CONFIG = "configs/EfficientDet/EfficientDet-D0.yaml"
EFFDET_INIT = "init_effdet.pth"  # effdet's initial state dict
OUR_INIT = "init_ours.pth"  # the same, converted into ours (MODEL.WEIGHTS of our side)


def synthetic_overrides(iters: int, size: int = 320, ema_decay: float = 0.99) -> List[str]:
    """EfficientDet-D0 on the built-in synthetic dataset (5 classes) at ``size`` px for
    ``iters`` iterations of batch 4 on the CPU, the recipe kept (scale jitter 0.1-2.0, EMA,
    clipping at 10, warmup then cosine) but BN for SyncBN (one process) and an EMA decay
    for a short run (0.9998 would leave the EMA 94 % the initial weights after 300 steps)
    and a BN momentum of 0.1 in the neck and the head: with EfficientDet's 0.01 the running
    statistics are still 5 % their initial values after 300 steps, and both sides evaluate
    at AP 0.0-0.1 (measured) however well they trained. Learning rate 0.1: chosen on
    ``synthetic_shapes_dev`` with our side alone (AP 0.0 / 0.05 / 0.9 at 0.01 / 0.04 / 0.1
    after 300 iterations; a D0 from random weights learns slowly)."""
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.EFFICIENTDET.NUM_CLASSES", "5",
        "MODEL.EFFICIENTNET.NORM", "BN", "MODEL.BIFPN.NORM", "BN", "MODEL.EFFICIENTDET.NORM", "BN",
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
        "DATASETS.TRAIN", "('synthetic_shapes_train',)", "DATASETS.TEST", "('synthetic_shapes_val',)",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.1", "SOLVER.MAX_ITER", str(iters),
        "SOLVER.WARMUP_ITERS", str(max(1, min(50, iters // 6))), "SOLVER.CHECKPOINT_PERIOD", "100000",
        "MODEL.BIFPN.NORM_MOMENTUM", "0.1", "MODEL.EFFICIENTDET.NORM_MOMENTUM", "0.1",
        "MODEL_EMA.DECAY", str(ema_decay), "TEST.EVAL_PERIOD", "0",
    ]


def _effdet_model(cfg, effdet_name: str) -> torch.nn.Module:
    """effdet's model ``effdet_name`` (random weights) with ``cfg``'s classes, square input
    size, drop-path rate of the bottom-up network and BN momentum of the neck and head
    (effdet has one for both)."""
    from effdet import EfficientDet, get_efficientdet_config

    momentum = cfg.MODEL.BIFPN.NORM_MOMENTUM
    if cfg.MODEL.EFFICIENTDET.NORM_MOMENTUM != momentum:
        raise ValueError("effdet has one BN momentum for its neck and head: MODEL.BIFPN.NORM_MOMENTUM "
                         "and MODEL.EFFICIENTDET.NORM_MOMENTUM must be equal")
    config = get_efficientdet_config(effdet_name)
    config.norm_kwargs = dict(config.norm_kwargs, momentum=momentum)
    config.num_classes = cfg.MODEL.EFFICIENTDET.NUM_CLASSES
    config.image_size = [cfg.INPUT.MAX_SIZE_TRAIN] * 2
    config.backbone_args = dict(config.backbone_args, drop_path_rate=cfg.MODEL.EFFICIENTNET.DROP_PATH_RATE)
    return EfficientDet(config, pretrained_backbone=False)


def _converted(state: Dict[str, torch.Tensor], model: torch.nn.Module, what: str) -> Dict[str, torch.Tensor]:
    """effdet's ``state`` converted into ``model``'s names and layout.

    Raises:
        RuntimeError: the converter left a weight of ours unset or one of effdet's unused.
    """
    from bifpn_d2.convert import convert_effdet_detector

    converted, missing, unexpected = convert_effdet_detector(state, model)
    if missing or unexpected:
        raise RuntimeError(f"converting {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return converted


def write_initial_weights(cfg, seed: int, directory: Path,
                          effdet_name: str = EFFDET_NAME) -> Tuple[Path, Path]:
    """effdet's model initialised by effdet with ``seed`` and the same weights converted
    into ours (built from ``cfg``): written to ``directory`` as :data:`EFFDET_INIT` and
    :data:`OUR_INIT`; returns both paths.

    Raises:
        RuntimeError: the converter left a weight of ours unset or one of effdet's unused.
    """
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    reference = _effdet_model(cfg, effdet_name)
    state = _converted(reference.state_dict(), build_model(cfg), effdet_name)
    directory.mkdir(parents=True, exist_ok=True)
    effdet_path, our_path = directory / EFFDET_INIT, directory / OUR_INIT
    torch.save(reference.state_dict(), effdet_path)
    torch.save({"model": state}, our_path)
    return effdet_path, our_path


def effdet_target(instances: Sequence, size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """effdet's training target for a batch of Detectron2 ``Instances`` (``gt_boxes``
    (x0, y0, x1, y1), ``gt_classes`` from 0) of images of ``size`` (height, width): boxes
    (y0, x0, y1, x1) and classes from 1, each image's padded with -1 to the batch's largest
    count (effdet's labeler skips them), so that images with no box are negatives only."""
    height, width = size
    boxes = [i.gt_boxes.tensor[:, [1, 0, 3, 2]] for i in instances]
    classes = [i.gt_classes.float() + 1 for i in instances]
    count = max(1, max(len(b) for b in boxes))
    padded_boxes = torch.full((len(boxes), count, 4), -1.0)
    padded_classes = torch.full((len(boxes), count), -1.0)
    for i, (b, c) in enumerate(zip(boxes, classes)):
        padded_boxes[i, : len(b)] = b
        padded_classes[i, : len(c)] = c
    batch = len(instances)
    return {"bbox": padded_boxes, "cls": padded_classes, "img_scale": torch.ones(batch),
            "img_size": torch.tensor([[width, height]] * batch, dtype=torch.float)}


def train_effdet(cfg, args, effdet_init: Path, effdet_name: str = EFFDET_NAME) -> Dict:
    """Train effdet's model from ``effdet_init`` on ``cfg``'s data and schedule with effdet's
    training pieces; log and write ``metrics.json`` into ``cfg.OUTPUT_DIR`` as
    ``tools/train_net.py`` does; evaluate its EMA weights. Returns the evaluation results."""
    import time

    from detectron2.engine import default_setup
    from detectron2.evaluation.testing import flatten_results_dict
    from detectron2.solver import build_lr_scheduler
    from detectron2.solver.build import get_default_optimizer_params
    from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter
    from effdet import DetBenchTrain
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    from bifpn_d2.engine import Trainer
    from bifpn_d2.engine.trainer import log_period

    # Built before the seeding, so that its random initialisation (overwritten) draws
    # nothing the data or our side's drop path would see.
    reference = _effdet_model(cfg, effdet_name)
    reference.load_state_dict(torch.load(effdet_init, map_location="cpu"))
    default_setup(cfg, args)  # as tools/train_net.py: logging, seeding, config.yaml
    ours = Trainer(cfg)  # the same model, loader and random draws as our side builds
    loader = ours._trainer.data_loader
    device = torch.device(cfg.MODEL.DEVICE)
    # .to(device) moves `reference` with the bench (its anchors are built on the CPU)
    bench = DetBenchTrain(reference, create_labeler=True).to(device).train()
    params = get_default_optimizer_params(reference, base_lr=cfg.SOLVER.BASE_LR,
                                          weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
                                          bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
                                          weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    scheduler = build_lr_scheduler(cfg, optimizer)
    ema = ModelEmaV3(reference, decay=cfg.MODEL_EMA.DECAY)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    max_iter, period = cfg.SOLVER.MAX_ITER, log_period(cfg.SOLVER.MAX_ITER)
    writers = [CommonMetricPrinter(max_iter), JSONWriter(str(Path(cfg.OUTPUT_DIR) / "metrics.json"))]
    data = iter(loader)
    with EventStorage(0) as storage:
        for iteration in range(max_iter):
            storage.iter = iteration
            start = time.perf_counter()
            batched_inputs = next(data)
            images = ours.model.preprocess_image(batched_inputs)
            data_time = time.perf_counter() - start
            target = effdet_target([d["instances"] for d in batched_inputs], tuple(images.tensor.shape[-2:]))
            target = {key: value.to(device) for key, value in target.items()}
            output = bench(images.tensor, target)
            optimizer.zero_grad()
            output["loss"].backward()
            if clip.ENABLED:
                dispatch_clip_grad(reference.parameters(), clip.CLIP_VALUE, mode="norm")
            optimizer.step()
            ema.update(reference, step=iteration + 1)
            storage.put_scalars(total_loss=output["loss"].item(), loss_cls=output["class_loss"].item(),
                                loss_box_reg=bench.loss_fn.box_loss_weight * output["box_loss"].item(),
                                data_time=data_time, time=time.perf_counter() - start)
            storage.put_scalar("lr", optimizer.param_groups[0]["lr"], smoothing_hint=False)
            scheduler.step()
            if (iteration + 1) % period == 0 or iteration == max_iter - 1:
                for writer in writers:
                    writer.write()
        ours.model.load_state_dict(_converted(ema.module.state_dict(), ours.model, "the EMA"))
        results = Trainer.evaluate(cfg, ours.model)
        storage.iter = max_iter  # as Detectron2 records the evaluation after training
        storage.put_scalars(**flatten_results_dict(results), smoothing_hint=False)
        writers[1].write()
    for writer in writers:
        writer.close()
    return results


class EffdetRun(Run):
    """One training of effdet's side (:func:`train_effdet`, run as ``python -m
    benchmarks.effdet_training``) with the config, overrides and seed of a :class:`Run`."""

    def command(self) -> List[str]:
        return [sys.executable, "-m", "benchmarks.effdet_training", "--config-file", self.config,
                "--effdet-init", str(self.output_dir.parent / f"init_seed{self.seed}" / EFFDET_INIT),
                "OUTPUT_DIR", str(self.output_dir), "SEED", str(self.seed), *self.overrides]


def _plot_curves(runs: Dict[str, Sequence[Run]], path: Path, title: str) -> str:
    """The training loss of every run against the iteration, smoothed as logged."""
    from .report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"effdet": "-", "ours": "--"}
    for side, side_runs in runs.items():
        for run in side_runs:
            ax.plot([i + 1 for i in run.iterations], run.losses, styles.get(side, "-"),
                    label=f"{side} seed {run.seed}: AP {run.value('bbox/AP'):.1f}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("total loss (class + 50 x box)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, str(path))


def compare_trainings(
    seeds: Sequence[int] = (0, 1),
    iters: int = 300,
    output_dir: Path = Path("output/effdet_training"),
    jobs: int = 2,
    threads: int = 1,
    opts: Sequence[str] = (),
    say: Callable[[str], None] = print,
) -> List[Dict[str, object]]:
    """Train effdet's side and ours for every seed (``jobs`` at a time); write
    ``results.md`` / ``.csv`` (AP per side: mean, spread, each seed) and ``results.png``
    (the training curves) into ``output_dir``. Returns the table's rows."""
    from bifpn_d2.data import ensure_generated
    from bifpn_d2.engine.config import load_config

    from .report import markdown_table, write_csv, write_text

    config = str(ROOT / CONFIG)
    overrides = synthetic_overrides(iters) + list(opts)
    cfg = load_config(config, overrides)
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        ensure_generated(name)
    output_dir = Path(output_dir).resolve()
    runs: Dict[str, List[Run]] = {"effdet": [], "ours": []}
    for seed in seeds:
        _, our_init = write_initial_weights(cfg, seed, output_dir / f"init_seed{seed}")
        runs["effdet"].append(EffdetRun("effdet", config, output_dir / f"effdet_seed{seed}", tuple(overrides),
                                        seed))
        runs["ours"].append(Run("ours", config, output_dir / f"ours_seed{seed}",
                                tuple(overrides) + ("MODEL.WEIGHTS", str(our_init)), seed))
    say(f"effdet's training vs ours, {EFFDET_NAME} / {Path(CONFIG).name}, seeds {list(seeds)}, {iters} "
        f"iterations: {jobs} at a time, {threads} thread(s) each")
    run_all([run for pair in zip(runs["effdet"], runs["ours"]) for run in pair], jobs, threads, say)
    rows = summarize(runs, reference="effdet")
    for row in rows:
        side_runs = runs[str(row["model"])]
        row["final loss"] = mean_and_sd([r.losses[-1] if r.losses else math.nan for r in side_runs])[0]
    title = (f"EfficientDet-D0 trained by effdet's pieces and by tools/train_net.py: synthetic_shapes, "
             f"{cfg.INPUT.MAX_SIZE_TRAIN} px, batch {cfg.SOLVER.IMS_PER_BATCH}, {iters} iterations, "
             f"seeds {list(seeds)}, EMA weights evaluated on {', '.join(cfg.DATASETS.TEST)}")
    shown = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    table = markdown_table(shown)
    note = (f"s/iter: median of the logged iterations, {jobs} run(s) side by side, {threads} thread(s) each. "
            f"final loss: the last logged (20-iteration median) total loss.")
    write_text(f"{title}\n\n{table}\n{note}\n", str(output_dir / "results.md"))
    write_csv(rows, str(output_dir / "results.csv"))
    _plot_curves(runs, output_dir / "results.png", title.split(":")[0])
    print(f"\n{title}\n\n{table}\n{note}\n")
    return rows


def main(argv=None) -> None:
    """effdet's side of one run: ``--config-file C --effdet-init P KEY VALUE ...``."""
    from bifpn_d2.engine.config import load_config

    parser = argparse.ArgumentParser(description=train_effdet.__doc__)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--effdet-init", required=True, type=Path,
                        help=f"effdet's initial weights ({EFFDET_INIT})")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    train_effdet(cfg, SimpleNamespace(config_file=args.config_file, opts=args.opts, eval_only=False),
                 args.effdet_init)


if __name__ == "__main__":
    main()
