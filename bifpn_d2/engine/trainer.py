"""Detectron2's default trainer with atomic checkpoints, evaluators chosen from the dataset
metadata, fusion-weight logging and a log period suited to short runs."""

import contextlib
import functools
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, SemSegEvaluator
from detectron2.utils import comm
from fvcore.nn.precise_bn import get_bn_modules

from ..data import ensure_generated
from .checkpointer import AtomicCheckpointer
from .config import ConfigError, build_checked_model
from .hooks import FusionWeightLogger

__all__ = ["Trainer", "log_period"]


def log_period(max_iter: int) -> int:
    """How often (iterations) to print and write metrics: every 20 as Detectron2, but at
    least ~10 times per run, so that short CPU runs show progress and an ETA."""
    return max(1, min(20, max_iter // 10))


@contextlib.contextmanager
def _ddp_for_cpu_models():
    """While active, Detectron2's ``create_ddp_model`` wraps models without ``device_ids``.

    ``DefaultTrainer`` asks for ``device_ids=[local rank]``, which DistributedDataParallel
    accepts for GPU modules only; a CPU model (several CPU processes over gloo, as
    Detectron2's ``launch`` starts them without GPUs) must pass none."""
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = functools.partial(original, device_ids=None)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """Detectron2's default training loop with: atomic checkpoints, COCO / semantic
    segmentation evaluators chosen from the dataset metadata (generating the synthetic
    datasets first), a log period suited to short runs, and DDP over several CPU
    processes (``--num-gpus N`` on a machine without GPUs, gloo backend)."""

    def __init__(self, cfg: CfgNode):
        cpu_processes = cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1
        with _ddp_for_cpu_models() if cpu_processes else contextlib.nullcontext():
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Build the model; a config value a builder rejects becomes a :class:`ConfigError`."""
        model = build_checked_model(cfg)
        logging.getLogger("detectron2").info(f"Model:\n{model}")  # as DefaultTrainer does
        return model

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
