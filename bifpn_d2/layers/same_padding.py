"""TensorFlow "SAME" padding, computed from the input size at run time.

For a window op of size ``k`` and stride ``s`` (``k >= s``), TF pads
``(ceil(n / s) - 1) * s + k - n`` in total along an axis of length ``n``, the smaller half
before the input. PyTorch's symmetric padding gives the same output size but windows
shifted by one pixel on even sizes, so weights trained in TF (the ``tf_`` EfficientNets
and EfficientDets) need this to reproduce their outputs.
"""
from typing import List

import torch
import torch.nn.functional as F

__all__ = ["pad_same"]


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` of shape ``(N, C, H, W)`` so that a ``kernel``/``stride`` window op then
    gives ``ceil(H / stride) x ceil(W / stride)`` outputs, exactly as TF "SAME"."""
    h, w = x.shape[-2], x.shape[-1]
    pad_h = (-(-h // stride) - 1) * stride + kernel - h
    pad_w = (-(-w // stride) - 1) * stride + kernel - w
    pads: List[int] = [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]
    return F.pad(x, pads, value=value)
