"""Training and evaluation around Detectron2: config loading, output-directory checks,
atomic checkpoints, the trainer and the command line the scripts in ``tools/`` share.
Not imported by ``import bifpn_d2``."""

from .checkpointer import AtomicCheckpointer
from .config import ConfigError, load_config, load_lazy_config
from .hooks import FusionWeightLogger
from .launch import (
    DATASETS_ENV,
    build_parser,
    check_datasets,
    check_processes,
    check_weights,
    lazy_preflight,
    preflight,
    run_cli,
    wants_overwrite,
)
from .output_dir import LAST_CHECKPOINT, OVERWRITE_ENV, check_output_dir, checkpoints_in, forget_previous_run
from .trainer import Trainer, log_period

__all__ = [
    "AtomicCheckpointer",
    "ConfigError",
    "DATASETS_ENV",
    "FusionWeightLogger",
    "LAST_CHECKPOINT",
    "OVERWRITE_ENV",
    "Trainer",
    "build_parser",
    "check_datasets",
    "check_output_dir",
    "check_processes",
    "check_weights",
    "checkpoints_in",
    "forget_previous_run",
    "lazy_preflight",
    "load_config",
    "load_lazy_config",
    "log_period",
    "preflight",
    "run_cli",
    "wants_overwrite",
]
