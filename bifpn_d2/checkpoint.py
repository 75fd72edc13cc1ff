"""Reading weight files from local disk, with errors that say what is wrong.

Nothing here downloads: pretrained weights must already be on disk.
"""
import io
import os
import pickle
import pickletools
from typing import Any, Dict

import torch
from torch import nn

__all__ = [
    "HEAD_PREFIXES",
    "check_detectron2_checkpoint",
    "read_state_dict",
    "timm_pretrained_kwargs",
    "unreadable",
]

# Keys under which training frameworks nest the weights (timm, Detectron2, effdet, ...).
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Classification-head parameters of a timm EfficientNet, unused by a detection backbone.
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist (nothing is downloaded)")


def unreadable(path: str, error: Exception) -> ValueError:
    """The error for a weight file that torch or safetensors failed to read with ``error``.
    Not torch's own text: it spans many lines and suggests ``weights_only=False``, which
    would run arbitrary code from an unknown file."""
    return ValueError(
        f"weight file {path!r} is not a readable checkpoint ({type(error).__name__}): it is truncated, "
        "corrupt, not a PyTorch/safetensors file, or holds objects other than tensors (which are "
        "not loaded, for safety)"
    )


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Load ``{name: tensor}`` from a ``.pth``/``.pt``/``.pkl`` (torch) or ``.safetensors`` file.

    Nested checkpoints (``{"model": ...}``, ``{"state_dict": ...}``) are unwrapped and a
    ``module.`` prefix (DataParallel) is removed.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint (truncated, corrupt, wrong format).
    """
    _check_exists(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt archives
        raise unreadable(path, e) from None
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weight file {path!r} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


class _Refused(Exception):
    """A pickle names a global outside :class:`_ArrayUnpickler`'s list."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers of numpy arrays, what Detectron2's model-zoo ``.pkl`` files hold,
    and refuses every other global (so nothing in the file runs)."""

    _ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def check_detectron2_checkpoint(path: str) -> None:
    """Check, without running anything from the file, that Detectron2's
    ``DetectionCheckpointer`` can read the local file ``path``.

    ``.pkl`` (Detectron2's model zoo, Detectron / Caffe2): a pickle of numpy arrays; its
    opcodes are parsed (a truncated or corrupt file fails), then it is read with an
    unpickler that allows numpy arrays and nothing else. A well-formed pickle of other
    objects cannot be read safely and is left to Detectron2. Other files (``.pth``,
    ``.pyth``, ...): ``torch.load`` with ``weights_only=True``, as Detectron2 reads them with
    PyTorch's default.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt, of another format, or not a dict.
    """
    _check_exists(path)
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            raw = f.read()
        try:
            for _ in pickletools.genops(raw):  # parses the opcodes, runs nothing
                pass
            data = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except _Refused:
            return  # a well-formed pickle of other objects: for Detectron2 to judge
        except Exception as e:
            raise ValueError(f"weight file {path!r} is not a readable pickle ({type(e).__name__}): it is "
                             "truncated or corrupt") from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for corrupt archives
            raise unreadable(path, e) from None
    if not isinstance(data, dict):
        raise ValueError(f"weight file {path!r} holds a {type(data).__name__}, not a checkpoint dict")


def timm_pretrained_kwargs(path: str) -> Dict[str, Any]:
    """Keyword arguments for ``timm.create_model`` that load ImageNet weights from the local
    file ``path`` through timm's own mechanism: ``pretrained=True`` with
    ``pretrained_cfg_overlay=dict(file=path)`` (timm reads ``.pth``/``.safetensors`` files and
    its training checkpoints, preferring ``state_dict_ema`` to ``state_dict``, and removes
    ``module.`` prefixes), plus a filter that drops the classifier head (``conv_head``,
    ``bn2``, ``classifier``; present or not) and checks the rest strictly, because timm
    loads a feature extractor's weights non-strictly and would only log what is missing.

    Raises (from ``timm.create_model`` with these arguments):
        FileNotFoundError: no file at ``path`` (here, before timm is called).
        ValueError: the file is unreadable, holds more than tensors, or does not match the
            model (missing or unexpected keys, other shapes); the message lists them.
    """
    _check_exists(path)

    def check_keys(state: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"weight file {path!r} does not hold a state dict of tensors")
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
        _raise_on_mismatch(path, model.state_dict(), state)
        return state

    return dict(pretrained=True, pretrained_cfg_overlay=dict(file=path), pretrained_filter_fn=check_keys)


def _raise_on_mismatch(path: str, own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]) -> None:
    """A ``ValueError`` listing the keys of ``own`` missing from ``state``, the keys of
    ``state`` the model does not have, and the shapes that differ (none: returns)."""
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        def head(keys):
            return f"{len(keys)} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"

        raise ValueError(
            f"weight file {path!r} does not match the model: missing keys {head(missing)}, "
            f"unexpected keys {head(unexpected)}, shape mismatches {head(mismatched)}"
        )
