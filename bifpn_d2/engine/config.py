"""Loading a config: Detectron2's defaults, our keys, a YAML file and command-line
overrides, with mistakes reported as one sentence that names the key and where it was set."""
import difflib
import os
import re
from typing import List, Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from ..config import add_bifpn_config

__all__ = ["ConfigError", "load_config"]


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


def load_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2's defaults + :func:`~bifpn_d2.add_bifpn_config` + ``config_file`` + ``opts``
    (``["KEY", "VALUE", ...]``). Not frozen.

    Raises:
        ConfigError: missing file, unreadable YAML, unknown key or value of the wrong type;
            the message names the key and where it came from.
    """
    cfg = add_bifpn_config(get_cfg())
    if not config_file:
        raise ConfigError("--config-file is required")
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file!r} does not exist")
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, AssertionError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(_explain_merge_error(e, cfg, f"in {config_file}")) from None
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as e:
        raise ConfigError(_explain_merge_error(e, cfg, "on the command line")) from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA GPU is available; "
            "add `MODEL.DEVICE cpu` to the command line"
        )
    return cfg
