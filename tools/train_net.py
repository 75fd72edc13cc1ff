#!/usr/bin/env python
"""Train or evaluate a Detectron2 model whose backbone comes from bifpn_d2 (YAML configs).

Examples::

    # the built-in synthetic dataset, on CPU, in minutes
    python tools/train_net.py --config-file configs/synthetic/RetinaNet-R18-BiFPN.yaml
    # COCO on 8 GPUs; trailing KEY VALUE pairs override the config
    python tools/train_net.py --config-file configs/COCO-Detection/RetinaNet-R50-BiFPN_1x.yaml \\
        --num-gpus 8 OUTPUT_DIR output/retinanet_bifpn SOLVER.IMS_PER_BATCH 16
    # continue an interrupted run (iteration, optimizer and scheduler state) in OUTPUT_DIR
    python tools/train_net.py --config-file ... --resume
    # evaluate a checkpoint (or, with --resume, the last one in OUTPUT_DIR)
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/x/model_final.pth

``OUTPUT_DIR`` receives ``log.txt``, ``config.yaml``, ``metrics.json`` (one JSON line per
logged iteration, then the evaluation results), TensorBoard events, checkpoints
(``model_XXXXXXX.pth``, ``model_final.pth``, ``last_checkpoint``) and COCO results under
``inference/``. Checkpoints are written to a temporary file and renamed into place, so an
interrupted save never leaves a truncated file. A fresh training (neither ``--resume`` nor
``--eval-only``) refuses an ``OUTPUT_DIR`` that already holds checkpoints; ``--overwrite``
(or the environment variable ``BIFPN_D2_OVERWRITE=1``) starts afresh there anyway, replacing
its ``metrics.json`` and each checkpoint as the new run saves one.

Mistakes in the command line, the config or the output directory end the program with a
one-line ``error:`` message and exit status 2 instead of a traceback.
"""

import os
import sys
import tempfile
import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, SemSegEvaluator
from detectron2.utils import comm
from fvcore.nn.precise_bn import get_bn_modules

from bifpn_d2.data import ensure_generated
from bifpn_d2.engine.config import ConfigError, load_config
from bifpn_d2.engine.hooks import FusionWeightLogger

__all__ = [
    "ConfigError",
    "AtomicCheckpointer",
    "Trainer",
    "build_parser",
    "check_output_dir",
    "checkpoints_in",
    "forget_previous_run",
    "load_config",
    "log_period",
    "main",
    "wants_overwrite",
]

OVERWRITE_ENV = "BIFPN_D2_OVERWRITE"
LAST_CHECKPOINT = "last_checkpoint"


# --------------------------------------------------------------------------- output dir


def checkpoints_in(output_dir: str) -> List[str]:
    """Names of the checkpoint files (``*.pth``, ``last_checkpoint``) directly in
    ``output_dir``, sorted; empty if the directory does not exist."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if n.endswith(".pth") or n == LAST_CHECKPOINT)


def check_output_dir(output_dir: str, fresh_training: bool, overwrite: bool) -> None:
    """Create ``output_dir`` and make sure that a file can be written in it; for a fresh
    training, make sure it holds no checkpoints unless ``overwrite``.

    Raises:
        ConfigError: the directory cannot be created or written, or would be overwritten.
    """
    if not output_dir:
        raise ConfigError("OUTPUT_DIR is empty; give it a directory, e.g. `OUTPUT_DIR output/run1`")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(f"OUTPUT_DIR {output_dir!r} is not writable: {reason}") from None
    existing = checkpoints_in(output_dir)
    if fresh_training and existing and not overwrite:
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise ConfigError(
            f"OUTPUT_DIR {output_dir!r} already holds checkpoints ({shown}); refusing to train "
            "over them. Use --resume to continue that run, another OUTPUT_DIR, or --overwrite "
            f"(or {OVERWRITE_ENV}=1) to start afresh there"
        )


def forget_previous_run(output_dir: str) -> None:
    """Before an explicit overwrite: drop the old run's metrics and checkpoint pointer, so
    that its curves are not mixed with the new ones and ``--resume`` cannot pick up a
    stale checkpoint. The ``.pth`` files are replaced one by one as the new run saves."""
    for name in ("metrics.json", LAST_CHECKPOINT):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)


# --------------------------------------------------------------------------- checkpoints


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, flush it to disk,
    then rename it to ``path``: readers see the old file or the complete new one."""
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` whose ``.pth`` files and ``last_checkpoint`` pointer
    are replaced atomically (temporary file + ``os.replace``), never truncated in place."""

    def save(self, name: str, **kwargs: Any) -> None:
        """Save the model and every checkpointable (optimizer, scheduler, iteration) as
        ``<save_dir>/<name>.pth`` and point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        _atomic_write(
            os.path.join(self.save_dir, LAST_CHECKPOINT),
            lambda f: f.write(last_filename_basename.encode()),
        )


# --------------------------------------------------------------------------- trainer


def log_period(max_iter: int) -> int:
    """How often (iterations) to print and write metrics: every 20 as Detectron2, but at
    least ~10 times per run, so that short CPU runs show progress and an ETA."""
    return max(1, min(20, max_iter // 10))


class Trainer(DefaultTrainer):
    """Detectron2's default training loop with: atomic checkpoints, COCO / semantic
    segmentation evaluators chosen from the dataset metadata (generating the synthetic
    datasets first), and a log period suited to short runs."""

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Build the model; a config value a builder rejects becomes a :class:`ConfigError`."""
        try:
            return super().build_model(cfg)
        except (ValueError, KeyError) as e:
            message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            raise ConfigError(f"cannot build the model: {message}") from e

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        """COCO evaluation for detection datasets, mIoU for semantic segmentation ones."""
        ensure_generated(dataset_name)  # COCOEvaluator reads the json file directly
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "")
        if evaluator_type in ("coco", "coco_panoptic_seg"):
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if evaluator_type == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        raise ConfigError(
            f"no evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
            "DATASETS.TEST must name COCO-style detection or semantic segmentation datasets"
        )

    def build_hooks(self) -> List[hooks.HookBase]:
        """Timer, LR schedule, optional precise BN, atomic periodic checkpoints, evaluation
        (every ``TEST.EVAL_PERIOD`` and at the end), then the metric writers."""
        cfg = self.cfg
        # DefaultTrainer.__init__ made a plain checkpointer just before calling build_hooks;
        # use the atomic one everywhere (periodic saves and resume_or_load).
        self.checkpointer = AtomicCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        result: List[Optional[hooks.HookBase]] = [hooks.IterationTimer(), hooks.LRScheduler()]
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            precise_cfg = cfg.clone()
            precise_cfg.defrost()
            precise_cfg.DATALOADER.NUM_WORKERS = 0
            result.append(
                hooks.PreciseBN(
                    cfg.TEST.EVAL_PERIOD,
                    self.model,
                    self.build_train_loader(precise_cfg),
                    cfg.TEST.PRECISE_BN.NUM_ITER,
                )
            )
        if comm.is_main_process():
            result.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results() -> Dict[str, Any]:
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        result.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        result.append(FusionWeightLogger(log_period(self.max_iter)))
        if comm.is_main_process():  # last, so that the evaluation results get written too
            result.append(hooks.PeriodicWriter(self.build_writers(), period=log_period(self.max_iter)))
        return result

    def train(self) -> Optional[OrderedDict]:
        """Train from ``start_iter`` to ``SOLVER.MAX_ITER``; returns the last evaluation."""
        super().train()
        return getattr(self, "_last_eval_results", None)


# --------------------------------------------------------------------------- entry points


def build_parser():
    """Detectron2's argument parser plus ``--overwrite``."""
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"start a fresh training even if OUTPUT_DIR holds checkpoints (same as {OVERWRITE_ENV}=1)",
    )
    return parser


def setup(args) -> CfgNode:
    """Load and freeze the config, then Detectron2's logging / seeding / config backup."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args) -> Optional[OrderedDict]:
    """Train (or evaluate, with ``--eval-only``) in one process of a possibly distributed job.

    Returns:
        the evaluation results, ``{"bbox": {"AP": ..., ...}}``, or None without evaluation.
    """
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    if comm.is_main_process() and wants_overwrite(args) and not args.resume:
        forget_previous_run(cfg.OUTPUT_DIR)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def wants_overwrite(args) -> bool:
    """``--overwrite`` or ``BIFPN_D2_OVERWRITE`` set to anything but "" or "0"."""
    return bool(args.overwrite or os.environ.get(OVERWRITE_ENV, "") not in ("", "0"))


def _check_weights(cfg: CfgNode, args) -> None:
    """``--eval-only`` needs weights; a local ``MODEL.WEIGHTS`` must exist."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        if not (args.resume and checkpoints_in(cfg.OUTPUT_DIR)):
            raise ConfigError(f"MODEL.WEIGHTS {weights!r} does not exist")
    if (
        args.eval_only
        and not weights
        and not (args.resume and LAST_CHECKPOINT in checkpoints_in(cfg.OUTPUT_DIR))
    ):
        raise ConfigError(
            "--eval-only needs weights: pass `MODEL.WEIGHTS path/to/model.pth`, or --resume to "
            f"evaluate the last checkpoint in OUTPUT_DIR {cfg.OUTPUT_DIR!r} (there is none)"
        )


def preflight(args) -> CfgNode:
    """Everything that can be checked before any worker starts: config, output directory,
    weights. Runs in the launching process so that mistakes surface as one message."""
    cfg = load_config(args.config_file, args.opts)
    fresh = not (args.resume or args.eval_only)
    check_output_dir(cfg.OUTPUT_DIR, fresh_training=fresh, overwrite=wants_overwrite(args))
    _check_weights(cfg, args)
    return cfg


def run_cli(
    argv: Optional[Iterable[str]], preflight_fn: Callable[[Any], Any], main_fn: Callable[[Any], Any]
) -> None:
    """Parse ``argv``, check it with ``preflight_fn`` (one-line error and exit status 2 on a
    :class:`ConfigError`), then run ``main_fn(args)`` on every process of the job."""
    args = build_parser().parse_args(argv)
    try:
        preflight_fn(args)
        launch(
            main_fn,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ConfigError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)


def cli(argv: Optional[Iterable[str]] = None) -> None:
    """Parse ``argv``, check it, then run :func:`main` on every process of the job."""
    run_cli(argv, preflight, main)


if __name__ == "__main__":
    cli()
