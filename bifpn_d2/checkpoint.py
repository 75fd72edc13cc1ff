"""Reading weight files from local disk, with errors that say what is wrong.

Nothing here downloads: pretrained weights must already be on disk.
"""
import os
from typing import Dict

import torch
from torch import nn

__all__ = ["HEAD_PREFIXES", "read_state_dict", "load_backbone_weights"]

# Keys under which training frameworks nest the weights (timm, Detectron2, effdet, ...).
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Classification-head parameters of a timm EfficientNet, unused by a detection backbone.
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Load ``{name: tensor}`` from a ``.pth``/``.pt``/``.pkl`` (torch) or ``.safetensors`` file.

    Nested checkpoints (``{"model": ...}``, ``{"state_dict": ...}``) are unwrapped and a
    ``module.`` prefix (DataParallel) is removed.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint (truncated, corrupt, wrong format).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist (nothing is downloaded)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt archives
        # Not torch's own text: it spans many lines and suggests weights_only=False, which
        # would run arbitrary code from an unknown file.
        raise ValueError(
            f"weight file {path!r} is not a readable checkpoint ({type(e).__name__}): it is truncated, "
            "corrupt, not a PyTorch/safetensors file, or holds objects other than tensors (which are "
            "not loaded, for safety)"
        ) from None
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weight file {path!r} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load ImageNet weights into a timm feature extractor, ignoring the classifier head.

    Raises:
        ValueError: keys the model needs are missing, or shapes differ (e.g. weights of
            another EfficientNet size); the message lists them.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(HEAD_PREFIXES)}
    own = model.state_dict()
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
    model.load_state_dict(state)
