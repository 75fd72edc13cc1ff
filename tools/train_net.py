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

Evaluators are chosen from each test dataset's ``evaluator_type`` as Detectron2's own
``train_net.py`` chooses them (COCO, LVIS, Pascal VOC, Cityscapes, panoptic, semantic);
``TEST.AUG.ENABLED True`` adds an evaluation with test-time augmentation (R-CNN models).
``--config-file`` takes a path or the name of a shipped config
(``synthetic/RetinaNet-R18-BiFPN.yaml``, see ``bifpn_d2.model_zoo``).

Mistakes in the command line, the config, the datasets (not registered, or files missing
where ``DETECTRON2_DATASETS`` points), ``MODEL.WEIGHTS`` (missing or unreadable), the batch
size, the test datasets' evaluators or the output directory end the program with a
one-line ``error:`` message and exit status 2, before training starts and before anything
is written into ``OUTPUT_DIR``. Without GPUs, ``--num-gpus N`` runs N CPU processes (gloo
backend; ``SOLVER.IMS_PER_BATCH`` is split between them).
"""

from collections import OrderedDict
from typing import Optional

import bifpn_d2  # noqa: F401  (first: Detectron2 then imports without torch's TorchScript warnings)

# isort: split
from detectron2.config import CfgNode
from detectron2.engine import default_setup
from detectron2.utils import comm

from bifpn_d2.engine import (
    AtomicCheckpointer,
    Trainer,
    forget_previous_run,
    load_config,
    preflight,
    run_cli,
    wants_overwrite,
)


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
        AtomicCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, use_ema_weights=cfg.MODEL_EMA.USE_EMA_WEIGHTS
        ).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.evaluate(cfg, model)
    if comm.is_main_process() and wants_overwrite(args) and not args.resume:
        forget_previous_run(cfg.OUTPUT_DIR)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    run_cli(None, preflight, main, epilog=__doc__)
