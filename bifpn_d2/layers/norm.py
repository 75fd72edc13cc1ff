"""Normalization and activation layers chosen by name, as the config spells them."""
from typing import Optional

from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from torch import nn

__all__ = ["NORMS", "ACTIVATIONS", "make_norm", "make_activation"]

# "" and "none" both mean no normalization (Detectron2 spells it "").
NORMS = ("BN", "SyncBN", "NaiveSyncBN", "GN", "FrozenBN", "", "none")
ACTIVATIONS = ("swish", "silu", "relu", "none", "")


def make_norm(
    norm: str, channels: int, eps: float = 1e-5, momentum: float = 0.1
) -> Optional[nn.Module]:
    """
    Args:
        norm: one of :data:`NORMS`. ``SyncBN`` is PyTorch's (CUDA); ``NaiveSyncBN`` is
            Detectron2's, which also synchronises over gloo on CPU. ``GN`` uses 32 groups
            (or fewer when ``channels`` is not divisible by 32).
        channels: number of channels ``C`` of the ``(N, C, H, W)`` input.
        eps, momentum: batch-norm parameters in PyTorch's convention (EfficientDet uses
            eps=1e-3, momentum=0.01, i.e. TensorFlow's 0.99 decay).
    Returns:
        the module, or None for no normalization.
    """
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not one of {list(NORMS)}")
    if norm in ("", "none"):
        return None
    if norm == "BN":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels, eps=eps, momentum=momentum)
    if norm == "NaiveSyncBN":
        return NaiveSyncBatchNorm(channels, eps=eps, momentum=momentum)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=eps)
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=eps)


def make_activation(name: str) -> nn.Module:
    """``swish``/``silu`` -> SiLU (x * sigmoid(x)), ``relu`` -> ReLU, ``none``/"" -> Identity."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {list(ACTIVATIONS)}")
    if name in ("swish", "silu"):
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    return nn.Identity()
