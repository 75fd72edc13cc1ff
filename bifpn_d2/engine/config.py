"""Loading a config, YAML (Detectron2's defaults + our keys + a file + ``KEY VALUE``
overrides) or LazyConfig (a ``.py`` file + ``path.key=value`` overrides), with mistakes
reported as one sentence that names the key and where it was set."""

import difflib
import inspect
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import yaml
from detectron2.config import CfgNode, LazyConfig, get_cfg
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import model_zoo
from ..compile import compile_backends
from ..config import add_bifpn_config
from ..data.scale_jitter import check_scale_jitter
from .ema import check_decay

__all__ = [
    "ConfigError",
    "build_checked_model",
    "check_values",
    "load_config",
    "load_lazy_config",
    "resolve_config_file",
]


class ConfigError(Exception):
    """A mistake the user must fix (config, command line, output directory): reported as one
    line, without a traceback."""


def _all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    """Every leaf key of ``cfg`` as a dotted path (``MODEL.BIFPN.NUM_CELLS``, ...)."""
    keys = []
    for name, value in cfg.items():
        full = f"{prefix}{name}"
        keys += _all_keys(value, full + ".") if isinstance(value, CfgNode) else [full]
    return keys


def _explain_merge_error(error: Exception, cfg: CfgNode, where: str) -> str:
    """Turn yacs' KeyError / AssertionError / ValueError text into a sentence naming the key
    and ``where`` it was set ("in file.yaml", "on the command line")."""
    message = str(error.args[0]) if error.args else str(error)
    unknown = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if unknown:
        key = unknown.group(1)
        close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown config key {key} {where}{hint}"
    mismatch = re.search(
        r"Type mismatch \((.*?) vs\. (.*?)\) with values \((.*?) vs\. (.*?)\) for config key: (\S+)",
        message,
        flags=re.S,
    )
    if mismatch:
        expected, _, _, given, key = mismatch.groups()
        expected = re.sub(r"<class '(\w+)'>", r"\1", expected)
        return f"config key {key} {where} expects a value of type {expected}, got {given!r}"
    return f"invalid config {where}: {message}"


def resolve_config_file(config_file: str) -> str:
    """``config_file`` if it is a file; else the shipped config of that name
    (:func:`bifpn_d2.model_zoo.get_config_file`), also when written as in the repository
    (``configs/synthetic/RetinaNet-R18-BiFPN.yaml``), so that an installed package runs the
    README's commands from any directory.

    Raises:
        ConfigError: empty, or neither a file nor a shipped config.
    """
    if not config_file:
        raise ConfigError("--config-file is required")
    if os.path.isfile(config_file):
        return config_file
    name = Path(config_file).as_posix()
    try:
        return model_zoo.get_config_file(name[len("configs/"):] if name.startswith("configs/") else name)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {config_file!r} does not exist, and {e}") from None


def load_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2's defaults + :func:`~bifpn_d2.add_bifpn_config` + ``config_file`` (a path
    or a shipped config's name, see :func:`resolve_config_file`) + ``opts``
    (``["KEY", "VALUE", ...]``). Not frozen.

    Raises:
        ConfigError: missing file, unreadable YAML, unknown key or value of the wrong type;
            the message names the key and where it came from.
    """
    cfg = add_bifpn_config(get_cfg())
    config_file = resolve_config_file(config_file)
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, AssertionError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(_explain_merge_error(e, cfg, f"in {config_file}")) from None
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(_ints_as_floats(cfg, opts))
    except (KeyError, AssertionError, ValueError) as e:
        raise ConfigError(_explain_merge_error(e, cfg, "on the command line")) from None
    check_values(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA GPU is available; "
            "add `MODEL.DEVICE cpu` to the command line"
        )
    return cfg


def _ints_as_floats(cfg: CfgNode, opts: Sequence[str]) -> List[str]:
    """``opts`` with an integer given for a float key written as a float (``SOLVER.BASE_LR 1``
    means 1.0; yacs would refuse the int)."""
    out = list(opts)
    for i in range(0, len(out), 2):
        key, value = out[i], out[i + 1]
        node = cfg
        for part in key.split(".")[:-1]:
            node = node.get(part) if isinstance(node, CfgNode) else None
        current = node.get(key.split(".")[-1]) if isinstance(node, CfgNode) else None
        if isinstance(current, float) and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            out[i + 1] = str(float(value))
    return out


# Detectron2's two, and the norm of all gradients together (effdet's): see engine.trainer.
_CLIP_TYPES = ["value", "norm", "full_model"]


def check_values(cfg: CfgNode) -> None:
    """Refuse values of the training recipe that are of the right type but meaningless,
    naming the key and what is allowed (the model builders check the model's keys).

    Raises:
        ConfigError: the first bad value.
    """
    if not cfg.SOLVER.BASE_LR > 0:
        raise ConfigError(f"SOLVER.BASE_LR={cfg.SOLVER.BASE_LR!r} is not valid; it must be > 0")
    if "BIFPN" in cfg.MODEL:
        for name in ("LR_FACTOR", "FUSION_LR_FACTOR"):
            value = cfg.MODEL.BIFPN[name]
            if not value > 0:
                raise ConfigError(f"MODEL.BIFPN.{name}={value!r} is not valid; it must be > 0")
        warmup = cfg.MODEL.BIFPN.WARMUP_ITERS
        if not isinstance(warmup, int) or warmup < -1:
            raise ConfigError(f"MODEL.BIFPN.WARMUP_ITERS={warmup!r} is not valid; it must be an iteration "
                              "count >= 0, or -1 for the solver's warmup (SOLVER.WARMUP_ITERS)")
    sizes = cfg.INPUT.MIN_SIZE_TRAIN
    sizes = sizes if isinstance(sizes, (list, tuple)) else (sizes,)
    if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ConfigError(f"INPUT.MIN_SIZE_TRAIN={tuple(sizes)!r} is not valid; its sizes must be >= 1")
    for key in ("INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"):
        section, name = key.split(".")
        value = cfg[section][name]
        if key == "INPUT.MIN_SIZE_TEST" and value == 0:
            continue  # Detectron2: 0 disables resizing at test time
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} is not valid; it must be a size >= 1 (pixels)")
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ConfigError(f"SOLVER.AMP.ENABLED True needs a CUDA GPU (Detectron2's AMPTrainer), but "
                          f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r}; on the CPU train in float32 "
                          "(SOLVER.AMP.ENABLED False)")
    if cfg.MODEL.COMPILE and cfg.MODEL.COMPILE not in compile_backends():
        raise ConfigError(
            f"MODEL.COMPILE={cfg.MODEL.COMPILE!r} is not valid; allowed: '' (eager) or {compile_backends()}"
        )
    clip_type = cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE
    if clip_type not in _CLIP_TYPES:
        raise ConfigError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip_type!r} is not valid; allowed values: {_CLIP_TYPES}"
        )
    for check, key, value in ((check_decay, "MODEL_EMA.DECAY", cfg.MODEL_EMA.DECAY),
                              (check_scale_jitter, "INPUT.SCALE_JITTER", cfg.INPUT.SCALE_JITTER)):
        try:
            check(key, value)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def build_checked_model(cfg: CfgNode, device: Optional[str] = None) -> torch.nn.Module:
    """Detectron2's ``build_model(cfg)`` (on ``device``, default ``cfg.MODEL.DEVICE``), with a
    value a builder rejects reported as a :class:`ConfigError` naming the key."""
    from detectron2.modeling import build_model

    if device is not None:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = device
    try:
        return build_model(cfg)
    except (ValueError, KeyError) as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"cannot build the model: {message}") from e


def _accepted_arguments(target: object) -> Optional[List[str]]:
    """The keyword arguments a ``LazyCall`` target (a callable or its dotted name) takes,
    or None if it takes any (``**kwargs``) or cannot be inspected."""
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return None
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _check_override_keys(cfg: DictConfig, overrides: List[str]) -> None:
    """Refuse ``key=value`` overrides whose key does not exist, except a new argument that
    the ``LazyCall`` holding it (its parent has ``_target_``) accepts."""
    missing = object()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if OmegaConf.select(cfg, key, default=missing) is not missing:
            continue
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if not (isinstance(parent, DictConfig) and "_target_" in parent):
            raise ConfigError(f"unknown config key {key} on the command line")
        target = parent["_target_"]
        accepted = _accepted_arguments(target)
        if accepted is not None and name not in accepted:
            target = target if isinstance(target, str) else getattr(target, "__qualname__", target)
            raise ConfigError(f"unknown config key {key} on the command line: {target} takes no argument "
                              f"{name!r}; its arguments: {accepted}")


def load_lazy_config(config_file: str, overrides: List[str]) -> DictConfig:
    """Load ``config_file`` and apply ``path.key=value`` ``overrides``.

    Raises:
        ConfigError: missing or broken file, unknown key, malformed override.
    """
    config_file = resolve_config_file(config_file)
    try:
        cfg = LazyConfig.load(config_file)
    except (SyntaxError, ImportError, KeyError, ValueError, OmegaConfBaseException) as e:
        raise ConfigError(f"cannot load {config_file}: {type(e).__name__}: {e}") from None
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be path.key=value, got {bad}")
    _check_override_keys(cfg, overrides)
    try:
        return LazyConfig.apply_overrides(cfg, overrides)
    except Exception as e:  # hydra's parser raises its own exception types
        raise ConfigError(f"bad override on the command line: {e}") from None
