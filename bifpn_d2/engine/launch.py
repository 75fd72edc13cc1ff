"""The command line every training script shares: Detectron2's arguments, the checks
that run before any worker starts, and the launch (one process per GPU and machine)."""

import argparse
import os
import sys
from typing import Any, Callable, Iterable, Optional, TypeVar

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, launch

from .config import ConfigError, build_checked_model, load_config, load_lazy_config
from .evaluation import check_evaluation
from .output_dir import LAST_CHECKPOINT, OVERWRITE_ENV, check_output_dir, checkpoints_in

__all__ = [
    "build_parser",
    "check_weights",
    "exit_on_config_error",
    "lazy_preflight",
    "preflight",
    "run_cli",
    "script_parser",
    "wants_overwrite",
]

T = TypeVar("T")


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
    """Everything that can be checked before any worker starts: config, model (built once
    on the CPU), evaluators of the test datasets and test-time augmentation, output
    directory, weights. Runs in the launching process so that mistakes surface as one
    message."""
    cfg = load_config(args.config_file, args.opts)
    model = build_checked_model(cfg, device="cpu")  # every value the builders check, before any worker
    check_evaluation(cfg, model, args.num_machines)  # not after hours of training
    fresh = not (args.resume or args.eval_only)
    check_output_dir(cfg.OUTPUT_DIR, fresh_training=fresh, overwrite=wants_overwrite(args))
    check_weights(cfg, args)
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
    device = str(cfg.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {device!r} but no CUDA GPU is available; add `train.device=cpu`")
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
