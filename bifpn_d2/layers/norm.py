"""Normalization and activation layers chosen by name, and :class:`LayerStyle`, the one
value that says how a neck builds its conv, norm and pooling layers.

Norm names are Detectron2's (those of ``detectron2.layers.get_norm``), so a config says
``BN``, ``SyncBN``, ``naiveSyncBN`` ... for the BiFPN exactly as for Detectron2's FPN and
heads; unlike ``get_norm``, eps and momentum are set here (EfficientDet's BN uses eps 1e-3
and momentum 0.01).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from torch import nn

from .checks import check_choice

__all__ = [
    "ACTIVATIONS", "NORMS", "ChannelLayerNorm", "LayerStyle", "canonical_norm", "make_activation",
    "make_norm",
]

# Detectron2's names ("" = no normalization).
NORMS = ("BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "FrozenBN", "GN", "LN", "")
# Earlier spellings of this project, still accepted.
_ALIASES = {"NaiveSyncBN": "naiveSyncBN", "none": ""}
NORM_ALIASES = tuple(_ALIASES)
ACTIVATIONS = ("swish", "silu", "relu", "relu6", "none", "")


def canonical_norm(norm: str) -> str:
    """``norm`` in Detectron2's spelling (old aliases mapped).

    Raises:
        OptionError: an unknown name; the message lists the allowed ones.
    """
    norm = _ALIASES.get(norm, norm)
    check_choice("norm", norm, NORMS)
    return norm


class ChannelLayerNorm(nn.LayerNorm):
    """LN over the channels of each pixel: ``(N, C, H, W) -> (N, C, H, W)``, Detectron2's
    ``"LN"`` (the same ``weight`` and ``bias``, so its checkpoints load).

    Detectron2's ``LayerNorm`` computes it in five elementwise passes, several times GN's
    time on a CPU, and returns float32 under autocast (its float32 weight promotes the result).
    This runs PyTorch's fused ``layer_norm`` on the channels-last view of the map: one
    pass, as fast as GN, in the input's dtype under autocast. The output keeps the input's
    memory layout.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        y = y.permute(0, 3, 1, 2)
        if x.is_contiguous() and not y.is_contiguous():
            y = y.contiguous()  # an NCHW input (not channels-last) gets an NCHW output
        return y


def make_norm(norm: str, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> Optional[nn.Module]:
    """
    Args:
        norm: one of :data:`NORMS` (or an alias). ``SyncBN`` and ``nnSyncBN`` are
            PyTorch's ``SyncBatchNorm`` (CUDA); ``naiveSyncBN`` (and ``naiveSyncBN_N``,
            which weighs each worker by its batch size) is Detectron2's, which also
            synchronises over gloo on CPU. ``GN`` uses 32 groups, or fewer when
            ``channels`` is not divisible by 32; ``LN`` normalises over channels.
        channels: number of channels ``C`` of the ``(N, C, H, W)`` input.
        eps, momentum: in PyTorch's convention (momentum applies to batch norms).
    Returns:
        the module, or None for no normalization.
    """
    norm = canonical_norm(norm)
    if norm == "":
        return None
    if norm == "BN":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if norm in ("SyncBN", "nnSyncBN"):
        return nn.SyncBatchNorm(channels, eps=eps, momentum=momentum)
    if norm in ("naiveSyncBN", "naiveSyncBN_N"):
        stats_mode = "N" if norm == "naiveSyncBN_N" else ""
        return NaiveSyncBatchNorm(channels, eps=eps, momentum=momentum, stats_mode=stats_mode)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=eps)
    if norm == "LN":
        return ChannelLayerNorm(channels, eps=eps)
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=eps)


@dataclass(frozen=True)
class LayerStyle:
    """How a neck makes its layers, passed as one value from the neck to every layer.

    Attributes:
        norm: normalization after each conv, one of :data:`NORMS`.
        norm_eps, norm_momentum: its parameters (PyTorch's convention).
        same_padding: TF "SAME" padding for max-pools, as TF-trained checkpoints need.
        bias_before_norm: give convs followed by a norm a bias anyway (the redundant
            bias of TF-trained EfficientDet checkpoints).
    """

    norm: str = "BN"
    norm_eps: float = 1e-3
    norm_momentum: float = 0.01
    same_padding: bool = False
    bias_before_norm: bool = False

    def __post_init__(self):
        object.__setattr__(self, "norm", canonical_norm(self.norm))

    def make_norm(self, channels: int) -> Optional[nn.Module]:
        """The norm for a ``channels``-channel conv output, or None."""
        return make_norm(self.norm, channels, self.norm_eps, self.norm_momentum)

    @property
    def conv_bias(self) -> bool:
        """Whether a conv followed by this style's norm gets a bias."""
        return self.norm == "" or self.bias_before_norm


def make_activation(name: str) -> nn.Module:
    """``swish``/``silu`` -> SiLU (x * sigmoid(x)), ``relu`` -> ReLU, ``relu6`` -> ReLU6
    (EfficientDet-Lite), ``none``/"" -> Identity."""
    check_choice("activation", name, ACTIVATIONS)
    if name in ("swish", "silu"):
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    return nn.Identity()
