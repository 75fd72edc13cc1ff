"""Training and evaluation around Detectron2: config loading, output-directory checks,
atomic checkpoints, the trainer, evaluator choice and the command line the scripts in
``tools/`` share; :mod:`.visualize` (demo and dataset pictures) and :mod:`.analysis` (model
analysis) for the tools of the same names. Not imported by ``import bifpn_d2``."""

from .checkpointer import AtomicCheckpointer
from .config import ConfigError, load_config, load_lazy_config, resolve_config_file
from .evaluation import EVALUATOR_TYPES, build_evaluator, check_evaluation
from .hooks import FusionWeightLogger
from .launch import (
    DATASETS_ENV,
    build_parser,
    check_datasets,
    check_processes,
    check_weights,
    exit_on_config_error,
    lazy_preflight,
    preflight,
    run_cli,
    script_parser,
    wants_overwrite,
)
from .output_dir import LAST_CHECKPOINT, OVERWRITE_ENV, check_output_dir, checkpoints_in, forget_previous_run
from .trainer import Trainer, log_period

__all__ = [
    "AtomicCheckpointer",
    "ConfigError",
    "EVALUATOR_TYPES",
    "DATASETS_ENV",
    "FusionWeightLogger",
    "LAST_CHECKPOINT",
    "OVERWRITE_ENV",
    "Trainer",
    "build_evaluator",
    "build_parser",
    "check_evaluation",
    "check_datasets",
    "check_output_dir",
    "check_processes",
    "check_weights",
    "checkpoints_in",
    "exit_on_config_error",
    "forget_previous_run",
    "lazy_preflight",
    "load_config",
    "load_lazy_config",
    "log_period",
    "preflight",
    "resolve_config_file",
    "run_cli",
    "script_parser",
    "wants_overwrite",
]
