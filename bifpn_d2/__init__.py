"""FPN and BiFPN feature pyramids for Detectron2.

``import bifpn_d2`` registers every backbone builder in Detectron2's ``BACKBONE_REGISTRY``
and the built-in synthetic datasets (:mod:`bifpn_d2.data`);
call :func:`add_bifpn_config` on a config before merging a YAML file that uses them.
"""
import warnings

# Detectron2 and fvcore script some functions when imported; torch's deprecation warning
# for torch.jit.script is not the user's to act on, so importing them here prints nothing.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import detectron2.engine  # noqa: F401
    import detectron2.evaluation  # noqa: F401
    import detectron2.modeling  # noqa: F401

    from . import data  # noqa: F401  (registers the built-in synthetic datasets)
    from .compile import compile_model
    from .config import add_bifpn_config
    from .modeling import *  # noqa: F401,F403
    from .modeling import __all__ as _modeling

__version__ = "0.1.0"
__all__ = ["add_bifpn_config", "compile_model"] + list(_modeling)
