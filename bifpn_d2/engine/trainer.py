"""Detectron2's default trainer with atomic checkpoints, evaluators chosen from the dataset
metadata as Detectron2's train_net chooses them, test-time augmentation, fusion-weight
logging and a log period suited to short runs."""

import contextlib
import functools
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from fvcore.nn.precise_bn import get_bn_modules

from ..compile import compile_model
from ..data.scale_jitter import build_train_mapper
from .checkpointer import AtomicCheckpointer
from .config import build_checked_model
from .ema import EMA_KEY, ModelEMAHook, build_model_ema
from .evaluation import build_evaluator
from .hooks import FusionWeightLogger
from .neck_warmup import build_lr_scheduler, is_neck_parameter, tag_neck_groups

__all__ = ["Trainer", "clip_full_model_gradients", "log_period", "neck_lr_factor"]



def neck_lr_factor(factor: float, fusion_factor: float = 1.0) -> Callable[[str], float]:
    """For Detectron2's ``get_default_optimizer_params(lr_factor_func=...)``: ``factor``
    for the parameters of a detector's neck (``backbone.*`` outside ``backbone.bottom_up``),
    ``factor * fusion_factor`` for the neck's fusion weights (``*.fusion.weight``), 1 for
    the rest. LazyConfig users pass it to their optimizer's params."""

    def lr_factor(name: str) -> float:
        if not is_neck_parameter(name):
            return 1.0
        return factor * fusion_factor if name.endswith(".fusion.weight") else factor

    return lr_factor


def clip_full_model_gradients(optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0):
    """Make ``optimizer`` (in place; returned) scale all gradients of its parameters
    together to a total ``norm_type``-norm of at most ``max_norm`` before each step
    (``torch.nn.utils.clip_grad_norm_``). Under AMP, Detectron2's ``GradScaler.step``
    unscales the gradients before calling ``step``, so the norm is that of the true ones."""
    base = type(optimizer)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        return base.step(self, closure)

    optimizer.__class__ = type(f"{base.__name__}WithFullModelGradientClip", (base,), {"step": step})
    return optimizer


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
    """Detectron2's default training loop with: atomic checkpoints, evaluators chosen from
    the dataset metadata (:mod:`bifpn_d2.engine.evaluation`), test-time augmentation after
    training when ``TEST.AUG.ENABLED``, a log period suited to short runs, the BiFPN's own
    learning rate (``MODEL.BIFPN.LR_FACTOR``), DDP over several CPU processes
    (``--num-gpus N`` on a machine without GPUs, gloo backend), EfficientDet's scale
    jitter (``INPUT.SCALE_JITTER``) and a weight EMA (``MODEL_EMA``: updated after every
    step, in every checkpoint, restored on resume, used for evaluation by default)."""

    def __init__(self, cfg: CfgNode):
        cpu_processes = cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1
        with _ddp_for_cpu_models() if cpu_processes else contextlib.nullcontext():
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Build the model (compiled with ``MODEL.COMPILE``); a config value a builder
        rejects becomes a :class:`ConfigError`."""
        model = build_checked_model(cfg)
        if cfg.MODEL.COMPILE:
            compile_model(model, backend=cfg.MODEL.COMPILE)
        logging.getLogger("detectron2").info(f"Model:\n{model}")  # as DefaultTrainer does
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Detectron2's SGD; with ``MODEL.BIFPN.LR_FACTOR`` != 1, the BiFPN's own parameters
        (everything of the backbone but its bottom-up network) learn at that multiple of
        the base learning rate, warmup and steps included, and its fusion weights at
        ``MODEL.BIFPN.FUSION_LR_FACTOR`` times the neck's; with ``MODEL.BIFPN.WARMUP_ITERS``
        >= 0, the neck's parameter groups are tagged for their own warmup
        (:mod:`.neck_warmup`). ``SOLVER.CLIP_GRADIENTS`` with
        ``CLIP_TYPE "full_model"`` clips the norm of all gradients together
        (:func:`clip_full_model_gradients`); "value" and "norm" are Detectron2's."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE == "full_model":
            unclipped = cfg.clone()
            unclipped.defrost()
            unclipped.SOLVER.CLIP_GRADIENTS.ENABLED = False
            optimizer = cls.build_optimizer(unclipped, model)
            return clip_full_model_gradients(optimizer, clip.CLIP_VALUE, clip.NORM_TYPE)
        bifpn = cfg.MODEL.BIFPN
        factor, fusion_factor, own_warmup = bifpn.LR_FACTOR, bifpn.FUSION_LR_FACTOR, bifpn.WARMUP_ITERS >= 0
        plain = factor == 1.0 and fusion_factor == 1.0 and not own_warmup
        if plain or "bifpn" not in cfg.MODEL.BACKBONE.NAME:
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            lr_factor_func=neck_lr_factor(factor, fusion_factor),
        )
        if own_warmup:
            params = tag_neck_groups(params, model)
        optimizer = torch.optim.SGD(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
        return maybe_add_gradient_clipping(cfg, optimizer)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        """Detectron2's schedule; the neck's own warmup with ``MODEL.BIFPN.WARMUP_ITERS`` >= 0
        (:func:`bifpn_d2.engine.neck_warmup.build_lr_scheduler`)."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Detectron2's training loader; with ``INPUT.SCALE_JITTER``, its mapper applies
        EfficientDet's scale jitter and square crop (:mod:`.scale_jitter`)."""
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model evaluation runs on: the EMA's copy with ``MODEL_EMA.ENABLED`` and
        ``MODEL_EMA.USE_EMA_WEIGHTS``, else the trained model."""
        if self.model_ema is not None and self.cfg.MODEL_EMA.USE_EMA_WEIGHTS:
            return self.model_ema.module
        return self.model

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        """The evaluator Detectron2's train_net would choose for the dataset's
        ``evaluator_type`` (:func:`bifpn_d2.engine.evaluation.build_evaluator`)."""
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> OrderedDict:
        """Evaluate ``model`` wrapped in Detectron2's ``GeneralizedRCNNWithTTA`` (the
        ``TEST.AUG`` sizes and flip); results under ``"<task>_TTA"`` keys, files under
        ``OUTPUT_DIR/inference_TTA/<dataset>``."""
        logging.getLogger("detectron2").info("Running inference with test-time augmentation ...")
        tta_model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((f"{task}_TTA", value) for task, value in results.items())

    @classmethod
    def evaluate(cls, cfg: CfgNode, model: torch.nn.Module) -> OrderedDict:
        """Evaluate on ``cfg.DATASETS.TEST``, and again with test-time augmentation when
        ``TEST.AUG.ENABLED``."""
        results = cls.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(cls.test_with_TTA(cfg, model))
        return results

    def build_hooks(self) -> List[hooks.HookBase]:
        """Timer, LR schedule, optional precise BN, atomic periodic checkpoints, evaluation
        (every ``TEST.EVAL_PERIOD`` and at the end), then the metric writers."""
        cfg = self.cfg
        # DefaultTrainer.__init__ made a plain checkpointer just before calling build_hooks;
        # use the atomic one everywhere (periodic saves and resume_or_load).
        # The EMA is made here, before the checkpointer that saves and restores it.
        ema = cfg.MODEL_EMA
        self.model_ema = build_model_ema(self._trainer.model, ema.DECAY) if ema.ENABLED else None
        extra = {EMA_KEY: self.model_ema} if self.model_ema is not None else {}
        self.checkpointer = AtomicCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, use_ema_weights=cfg.MODEL_EMA.USE_EMA_WEIGHTS,
            trainer=weakref.proxy(self), **extra,
        )
        result: List[Optional[hooks.HookBase]] = [hooks.IterationTimer(), hooks.LRScheduler()]
        if self.model_ema is not None:  # before checkpoints and evaluation see the step
            result.append(ModelEMAHook(self.model_ema))
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
            self._last_eval_results = self.test(self.cfg, self.eval_model)
            return self._last_eval_results

        def test_with_tta_and_save_results() -> Dict[str, Any]:
            tta_results = self.test_with_TTA(self.cfg, self.eval_model)
            self._last_eval_results = OrderedDict(self._last_eval_results or {}, **tta_results)
            return tta_results

        result.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if cfg.TEST.AUG.ENABLED:  # after training, as Detectron2's train_net registers it
            result.append(hooks.EvalHook(0, test_with_tta_and_save_results))
        result.append(FusionWeightLogger(log_period(self.max_iter)))
        if comm.is_main_process():  # last, so that the evaluation results get written too
            result.append(hooks.PeriodicWriter(self.build_writers(), period=log_period(self.max_iter)))
        return result

    def train(self) -> Optional[OrderedDict]:
        """Train from ``start_iter`` to ``SOLVER.MAX_ITER``; returns the last evaluation."""
        super().train()
        return getattr(self, "_last_eval_results", None)
