"""The configs shipped with bifpn_d2, by name, as Detectron2's ``model_zoo``.

A name is a path relative to the repository's ``configs/`` folder, e.g.
``"synthetic/RetinaNet-R18-BiFPN.yaml"``, ``"EfficientDet/EfficientDet-D0.yaml"`` or
``"lazy/EfficientDet-D0.py"``. An installed wheel carries the configs inside the package
(``bifpn_d2/model_zoo/configs``, copied there when the wheel is built); an editable install
or a source checkout reads the repository's ``configs/``. ``_BASE_`` references are relative
to the file, so they resolve in either place.

No trained detector weights are published: :func:`get` builds a model with random weights
(and the EfficientNet ImageNet weights of ``MODEL.EFFICIENTNET.WEIGHTS``, if a config sets
a local file).
"""

import difflib
from pathlib import Path
from typing import List, Optional, Union

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from omegaconf import DictConfig

from ..config import add_bifpn_config

__all__ = ["configs_root", "get", "get_config", "get_config_file", "list_configs"]

_PACKAGED = Path(__file__).resolve().with_name("configs")
_CHECKOUT = Path(__file__).resolve().parents[2] / "configs"


def configs_root() -> Path:
    """The folder holding the shipped configs: inside the installed package, else the
    source checkout's ``configs/``.

    Raises:
        FileNotFoundError: neither exists (a wheel built without its configs).
    """
    for root in (_PACKAGED, _CHECKOUT):
        if root.is_dir():
            return root
    raise FileNotFoundError(f"bifpn_d2's configs are neither at {_PACKAGED} nor at {_CHECKOUT}")


def list_configs() -> List[str]:
    """Names of every shipped config that builds a model: YAML files except the
    ``Base-*`` files, and LazyConfig ``.py`` files except the shared ``common.py``."""
    root = configs_root()
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".yaml", ".py")]
    return sorted(n for n in names if not Path(n).name.startswith("Base-") and Path(n).name != "common.py")


def get_config_file(config_path: str) -> str:
    """The absolute path of the shipped config ``config_path`` (relative to ``configs/``).

    Raises:
        FileNotFoundError: no such shipped config; the message suggests close names.
    """
    root = configs_root()
    path = (root / config_path).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        close = difflib.get_close_matches(config_path, list_configs(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (see model_zoo.list_configs())"
        raise FileNotFoundError(f"{config_path!r} is not a config shipped with bifpn_d2{hint}")
    return str(path)


def get_config(config_path: str) -> Union[CfgNode, DictConfig]:
    """The shipped config ``config_path``: a YAML one on Detectron2's defaults plus
    :func:`~bifpn_d2.add_bifpn_config` (a ``CfgNode``, not frozen), a ``.py`` one loaded by
    Detectron2's ``LazyConfig``."""
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    cfg = add_bifpn_config(get_cfg())
    cfg.merge_from_file(path)
    return cfg


def get(config_path: str, device: Optional[str] = None) -> torch.nn.Module:
    """The model of the shipped config ``config_path`` with random weights, in eval mode, on
    ``device`` (default: CUDA if available, else the CPU).

    Args:
        config_path: a name as for :func:`get_config_file`.
        device: ``"cpu"``, ``"cuda"``, ... (YAML configs: overrides ``MODEL.DEVICE``).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = get_config(config_path)
    if isinstance(cfg, CfgNode):
        cfg.MODEL.DEVICE = device
        model = build_model(cfg)
    else:
        model = instantiate(cfg.model).to(device)
    return model.eval()
