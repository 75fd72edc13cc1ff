#!/usr/bin/env python
"""Train or evaluate a model described by a LazyConfig (``.py``) file, e.g.
``configs/lazy/EfficientDet-D0.py``.

Same command line as ``tools/train_net.py`` (``--config-file``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``,
``--overwrite``), but overrides are ``path.key=value``::

    python tools/lazy_train_net.py --config-file configs/lazy/EfficientDet-D0.py \\
        train.output_dir=output/d0 train.device=cpu dataloader.train.total_batch_size=4

The config provides ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``,
``lr_multiplier`` and ``train`` (see ``configs/lazy/common.py``). Output directory checks,
atomic checkpoints and one-line errors are those of ``tools/train_net.py``.
"""

from typing import Any, Dict, List, Optional

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig

from bifpn_d2.data import ensure_generated
from bifpn_d2.engine import (
    AtomicCheckpointer,
    forget_previous_run,
    lazy_preflight,
    load_lazy_config,
    log_period,
    run_cli,
    wants_overwrite,
)
from bifpn_d2.engine.ema import EMA_KEY, ModelEMAHook, build_model_ema


def _test_dataset_names(cfg: DictConfig) -> List[str]:
    names = cfg.dataloader.test.dataset.names
    return [names] if isinstance(names, str) else list(names)


def do_test(cfg: DictConfig, model) -> Dict[str, Any]:
    """Run ``dataloader.test`` through ``model`` and ``dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return {}
    for name in _test_dataset_names(cfg):
        ensure_generated(name)  # COCOEvaluator reads the dataset's json file directly
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def _ema_options(cfg: DictConfig) -> Dict[str, Any]:
    """``train.model_ema`` (see configs/lazy/common.py), off where a config has none."""
    options = dict(enabled=False, decay=0.9998, use_ema_weights=True)
    options.update(cfg.train.get("model_ema", None) or {})
    return options


def do_train(cfg: DictConfig, resume: bool) -> Optional[Dict[str, Any]]:
    """Train from scratch (``train.init_checkpoint``) or resume from ``train.output_dir``;
    evaluates every ``train.eval_period`` iterations and at the end."""
    model = instantiate(cfg.model).to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    options = _ema_options(cfg)
    ema = build_model_ema(model, options["decay"]) if options["enabled"] else None
    checkpointer = AtomicCheckpointer(
        model, cfg.train.output_dir, use_ema_weights=options["use_ema_weights"], trainer=trainer,
        **({EMA_KEY: ema} if ema is not None else {}),
    )
    results: Dict[str, Any] = {}

    def evaluate() -> Dict[str, Any]:
        results.update(do_test(cfg, ema.module if ema is not None and options["use_ema_weights"] else model))
        return results

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ModelEMAHook(ema) if ema is not None else None,
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=min(cfg.train.log_period, log_period(cfg.train.max_iter)),
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return results or None


def main(args) -> Optional[Dict[str, Any]]:
    """One process of a (possibly distributed) job."""
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = create_ddp_model(instantiate(cfg.model).to(cfg.train.device))
        use_ema = _ema_options(cfg)["use_ema_weights"]
        AtomicCheckpointer(model, cfg.train.output_dir, use_ema_weights=use_ema).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    if comm.is_main_process() and wants_overwrite(args) and not args.resume:
        forget_previous_run(cfg.train.output_dir)
    return do_train(cfg, resume=args.resume)


if __name__ == "__main__":
    run_cli(None, lazy_preflight, main, epilog=__doc__)
