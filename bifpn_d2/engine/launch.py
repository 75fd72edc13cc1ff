"""The command line every training script shares: Detectron2's arguments, the checks
that run before any worker starts, and the launch (one process per GPU and machine)."""

import argparse
import difflib
import os
import sys
from typing import Any, Callable, Iterable, List, Optional, Tuple, TypeVar

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser, launch

from ..checkpoint import check_detectron2_checkpoint
from ..data import is_synthetic_dataset
from .config import ConfigError, build_checked_model, load_config, load_lazy_config
from .ema import check_decay
from .evaluation import check_evaluation
from .output_dir import LAST_CHECKPOINT, OVERWRITE_ENV, check_output_dir, checkpoints_in

__all__ = [
    "DATASETS_ENV",
    "build_parser",
    "check_datasets",
    "check_processes",
    "check_weights",
    "exit_on_config_error",
    "lazy_preflight",
    "preflight",
    "run_cli",
    "script_parser",
    "wants_overwrite",
]

T = TypeVar("T")

DATASETS_ENV = "DETECTRON2_DATASETS"  # where Detectron2's builtin datasets live ("./datasets" if unset)
# Metadata fields that name a dataset's files in Detectron2's builtin registrations.
_DATASET_PATH_FIELDS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root",
                        "dirname")


def build_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's argument parser (``--config-file``, ``--num-gpus``, ``--resume``,
    ``--eval-only``, ``KEY VALUE`` overrides, ...) plus ``--overwrite``."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"start a fresh training even if OUTPUT_DIR holds checkpoints (same as {OVERWRITE_ENV}=1)",
    )
    return parser


def script_parser(doc: str, opts: str = "opts") -> argparse.ArgumentParser:
    """The parser of a script that reads one config: description and ``--help`` text from
    the script's docstring ``doc``, ``--config-file``, and the trailing ``KEY VALUE``
    overrides as ``opts`` (Detectron2's tools) or ``--opts`` (Detectron2's demo)."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file, or shipped name")
    parser.add_argument(opts, default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def wants_overwrite(args) -> bool:
    """``--overwrite`` or ``BIFPN_D2_OVERWRITE`` set to anything but "" or "0"."""
    return bool(args.overwrite or os.environ.get(OVERWRITE_ENV, "") not in ("", "0"))


def check_weights(cfg: CfgNode, args) -> None:
    """``--eval-only`` needs weights; a local ``MODEL.WEIGHTS`` that will be loaded must be a
    file Detectron2's checkpointer can read (checked without running anything from it)."""
    weights = cfg.MODEL.WEIGHTS
    resuming = args.resume and LAST_CHECKPOINT in checkpoints_in(cfg.OUTPUT_DIR)  # WEIGHTS unused then
    if weights and "://" not in weights and not resuming:
        try:
            check_detectron2_checkpoint(weights)
        except FileNotFoundError:
            raise ConfigError(f"MODEL.WEIGHTS {weights!r} does not exist") from None
        except ValueError as e:
            raise ConfigError(f"MODEL.WEIGHTS: {e}; give it a checkpoint saved by Detectron2 or by this "
                              "project (OUTPUT_DIR/model_final.pth), or a model-zoo .pkl") from None
    if args.eval_only and not weights and not resuming:
        raise ConfigError(
            "--eval-only needs weights: pass `MODEL.WEIGHTS path/to/model.pth`, or --resume to "
            f"evaluate the last checkpoint in OUTPUT_DIR {cfg.OUTPUT_DIR!r} (there is none)"
        )


def _sync_bn_keys(node: CfgNode, prefix: str = "MODEL.") -> List[str]:
    """The ``*NORM`` keys under ``node`` set to PyTorch's SyncBatchNorm, which needs GPUs."""
    keys = []
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys += _sync_bn_keys(value, f"{prefix}{name}.")
        elif name.endswith("NORM") and value in ("SyncBN", "nnSyncBN"):
            keys.append(f"{prefix}{name}")
    return keys


def check_processes(cfg: CfgNode, args) -> None:
    """``--num-gpus`` against this machine, and ``SOLVER.IMS_PER_BATCH`` against the number
    of processes. Without GPUs, ``--num-gpus N`` runs N CPU processes (gloo backend)."""
    per_machine = args.num_gpus
    processes = per_machine * args.num_machines
    if per_machine < 1:
        raise ConfigError(f"--num-gpus {per_machine}: give the number of processes per machine, >= 1")
    on_gpu = cfg.MODEL.DEVICE.startswith("cuda")  # (load_config refused it without CUDA)
    if on_gpu and per_machine > torch.cuda.device_count():
        raise ConfigError(f"--num-gpus {per_machine} but this machine has {torch.cuda.device_count()} "
                          "GPU(s); give at most that many")
    if not on_gpu and per_machine > 1 and torch.cuda.is_available():
        raise ConfigError(f"--num-gpus {per_machine} with MODEL.DEVICE {cfg.MODEL.DEVICE!r} on a machine "
                          "with GPUs: Detectron2 then synchronises over NCCL, which needs GPU tensors; add "
                          "`MODEL.DEVICE cuda`, or use --num-gpus 1")
    if not on_gpu and processes > 1:
        keys = _sync_bn_keys(cfg.MODEL)
        if keys:
            raise ConfigError(f"{', '.join(keys)} is SyncBN (PyTorch's SyncBatchNorm), which needs GPUs, "
                              f"and --num-gpus {per_machine} without GPUs runs CPU processes: set it to "
                              "naiveSyncBN (synchronises over gloo too), GN or BN")
    batch = cfg.SOLVER.IMS_PER_BATCH
    if not args.eval_only and (batch < 1 or batch % processes):
        rule = "must be >= 1" if processes == 1 else (
            f"over all {processes} processes (--num-gpus x --num-machines) must be a positive multiple of "
            f"{processes}")
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {batch} is not valid: the number of images per iteration "
                          f"{rule}; e.g. `SOLVER.IMS_PER_BATCH {2 * processes}`")


def _datasets_root_hint(path: str) -> str:
    """What to do about a missing dataset file at ``path``: for Detectron2's builtin
    datasets, where ``DETECTRON2_DATASETS`` points."""
    configured = os.environ.get(DATASETS_ENV)
    root = os.path.abspath(os.path.expanduser(configured or "datasets"))
    if os.path.commonpath([root, os.path.abspath(path)]) != root:
        return "put the files there, or register the dataset where they are"
    where = f"{DATASETS_ENV} is {configured!r}" if configured else (
        f"{DATASETS_ENV} is unset, so Detectron2 looks in ./datasets")
    return (f"{where}; set {DATASETS_ENV} to the folder that holds the dataset (for COCO: coco/annotations, "
            "coco/train2017, coco/val2017; Detectron2's datasets/README.md gives every layout)")


def check_datasets(cfg: CfgNode, args) -> None:
    """Every dataset the run reads (``DATASETS.TRAIN`` unless ``--eval-only``, and
    ``DATASETS.TEST``) is registered, and the files its metadata names exist. The built-in
    synthetic datasets are generated on first use and are not checked."""
    names: List[Tuple[str, str]] = [("DATASETS.TEST", name) for name in cfg.DATASETS.TEST]
    if not args.eval_only:
        if not cfg.DATASETS.TRAIN:
            raise ConfigError("DATASETS.TRAIN is empty; name a registered dataset, e.g. "
                              "`DATASETS.TRAIN \"('synthetic_shapes_train',)\"`")
        names = [("DATASETS.TRAIN", name) for name in cfg.DATASETS.TRAIN] + names
    registered = DatasetCatalog.list()
    for key, name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"{key} names {name!r}, which is not a registered dataset{hint}")
        if is_synthetic_dataset(name):
            continue
        metadata = MetadataCatalog.get(name)
        for field in _DATASET_PATH_FIELDS:
            path = metadata.get(field, None)
            if isinstance(path, str) and path and not os.path.exists(path):
                raise ConfigError(f"{key} {name!r} reads {path} ({field}), which does not exist: "
                                  f"{_datasets_root_hint(path)}")


def preflight(args) -> CfgNode:
    """Everything that can be checked before any worker starts: config, processes and batch
    size, datasets, weights, model (built once on the CPU), evaluators of the test datasets
    and test-time augmentation, and last the output directory, so that nothing is written
    into it unless every other check passed. Runs in the launching process so that
    mistakes surface as one message."""
    cfg = load_config(args.config_file, args.opts)
    check_processes(cfg, args)
    check_datasets(cfg, args)
    check_weights(cfg, args)
    model = build_checked_model(cfg, device="cpu")  # every value the builders check, before any worker
    check_evaluation(cfg, model, args.num_machines)  # not after hours of training
    fresh = not (args.resume or args.eval_only)
    check_output_dir(cfg.OUTPUT_DIR, fresh_training=fresh, overwrite=wants_overwrite(args))
    return cfg


def run_cli(
    argv: Optional[Iterable[str]],
    preflight_fn: Callable[[Any], Any],
    main_fn: Callable[[Any], Any],
    epilog: Optional[str] = None,
) -> None:
    """Parse ``argv`` (default: the command line), check it with ``preflight_fn`` (one-line
    error and exit status 2 on a :class:`ConfigError`), then run ``main_fn(args)`` on every
    process of the job (Detectron2's ``launch``). ``epilog`` ends the ``--help`` text."""
    args = build_parser(epilog).parse_args(argv)

    def check_and_launch() -> None:
        preflight_fn(args)
        if args.num_gpus > 1 and not torch.cuda.is_available():
            # N CPU processes share the cores instead of each taking all of them.
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_gpus)))
        launch(
            main_fn,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )

    exit_on_config_error(check_and_launch)


def exit_on_config_error(fn: Callable[[], T]) -> T:
    """``fn()``; a :class:`ConfigError` ends the program with a one-line ``<script>: error:
    ...`` message and exit status 2, as argparse reports a bad command line."""
    try:
        return fn()
    except ConfigError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)


def lazy_preflight(args) -> None:
    """:func:`preflight` for LazyConfig (``.py``) configs: config, device, output
    directory and weights, before any worker starts."""
    cfg = load_lazy_config(args.config_file, args.opts)
    ema = cfg.train.get("model_ema", None)
    if ema is not None and ema.get("enabled", False):
        try:
            check_decay("train.model_ema.decay", ema.get("decay", 0.0))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    device = str(cfg.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {device!r} but no CUDA GPU is available; add `train.device=cpu`")
    if args.num_gpus > 1 and not device.startswith("cuda"):
        raise ConfigError(f"--num-gpus {args.num_gpus} with train.device {device!r}: LazyConfig training "
                          "runs several processes on GPUs only; use --num-gpus 1, or a YAML config with "
                          "tools/train_net.py, which runs CPU processes over gloo")
    output_dir = cfg.train.output_dir
    check_output_dir(
        output_dir, fresh_training=not (args.resume or args.eval_only), overwrite=wants_overwrite(args)
    )
    has_last = LAST_CHECKPOINT in checkpoints_in(output_dir)
    if args.eval_only and not cfg.train.init_checkpoint and not (args.resume and has_last):
        raise ConfigError(
            "--eval-only needs weights: pass train.init_checkpoint=path/to/model.pth, or --resume "
            f"to evaluate the last checkpoint in train.output_dir {output_dir!r} (there is none)"
        )
