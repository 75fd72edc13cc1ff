"""FPN and BiFPN feature pyramids for Detectron2.

``import bifpn_d2`` registers every backbone builder in Detectron2's ``BACKBONE_REGISTRY``
and the built-in synthetic datasets (:mod:`bifpn_d2.data`);
call :func:`add_bifpn_config` on a config before merging a YAML file that uses them.
"""
from . import data  # noqa: F401  (registers the built-in synthetic datasets)
from .config import add_bifpn_config
from .modeling import *  # noqa: F401,F403
from .modeling import __all__ as _modeling

__version__ = "0.1.0"
__all__ = ["add_bifpn_config"] + list(_modeling)
