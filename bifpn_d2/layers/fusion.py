"""Weighted fusion of same-shaped feature maps (the "+" nodes of FPN and BiFPN).

Variants (EfficientDet, Tan et al. 2020, section 3.3), for inputs ``I_i`` and one
learnable scalar ``w_i`` per input edge, initialised to 1 (or to a given split):

==================  ===============================================  ==============
``method``          output                                           learnable
==================  ===============================================  ==============
``sum``             ``sum_i I_i``  (Detectron2 FPN, EfficientDet D6/D7)  no
``avg``             ``sum_i I_i / n``                                    no
``weighted``        ``sum_i w_i * I_i``  (unbounded fusion)              yes
``softmax``         ``sum_i softmax(w)_i * I_i``                         yes
``fast_normalized`` ``sum_i relu(w_i) / (eps + sum_j relu(w_j)) * I_i``  yes
==================  ===============================================  ==============

and google/automl's channel-wise kinds, with one weight per channel ``c`` per input edge,
``w_ic`` (shape ``(num_inputs, channels)``, ones at initialisation), normalised over the
inputs channel by channel:

===========================  ========================================================
``channel_softmax``          ``out[:, c] = sum_i softmax_i(w_:c) * I_i[:, c]``
``channel_fast_normalized``  ``out[:, c] = sum_i relu(w_ic) / (eps + sum_j relu(w_jc)) * I_i[:, c]``
===========================  ========================================================

Inputs are accumulated one by one (``addcmul``), never stacked into an ``(n, N, C, H, W)``
tensor first, and the weights are normalised out of place so autograd stays valid.
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

from .checks import check_choice

__all__ = ["CHANNEL_METHODS", "FUSION_METHODS", "FrozenChannelFusion", "FrozenFusion", "WeightedFusion"]

SCALAR_METHODS = ("sum", "avg", "weighted", "softmax", "fast_normalized")
CHANNEL_METHODS = ("channel_fast_normalized", "channel_softmax")
FUSION_METHODS = SCALAR_METHODS + CHANNEL_METHODS


class WeightedFusion(nn.Module):
    """Fuse ``num_inputs`` tensors of identical shape ``(N, C, H, W)`` into one."""

    def __init__(
        self,
        num_inputs: int,
        method: str = "fast_normalized",
        eps: float = 1e-4,
        channels: int = 0,
        initial: Optional[Sequence[float]] = None,
    ):
        """
        Args:
            num_inputs: number of input edges (>= 1).
            method: one of :data:`FUSION_METHODS`.
            eps: the epsilon of fast normalized fusion (1e-4 in the paper).
            channels: ``C`` of the inputs; needed (> 0) by the channel-wise methods only.
            initial: the inputs' initial weights relative to each other, ``num_inputs``
                values > 0 (e.g. ``(2, 1, 1)``: the first input starts with half of the
                normalised weight); None: all 1, the equal split. Only a learnable method
                takes a split other than the equal one.
        """
        super().__init__()
        check_choice("fusion", method, FUSION_METHODS)
        if num_inputs < 1:
            raise ValueError(f"a fusion needs at least one input, got num_inputs={num_inputs}")
        self.channel_wise = method in CHANNEL_METHODS
        if self.channel_wise and channels < 1:
            raise ValueError(f"fusion method {method!r} needs the inputs' channels (> 0), got {channels}")
        self.num_inputs = num_inputs
        self.method = method
        self.eps = eps
        # checked in Python: the module may be built on the meta device (no values to read)
        if initial is not None and (len(initial) != num_inputs or not all(w > 0 for w in initial)):
            raise ValueError(f"initial weights must be {num_inputs} values > 0, got {initial}")
        start = torch.tensor([1.0] * num_inputs if initial is None else list(initial), dtype=torch.float32)
        if method in ("softmax", "channel_softmax"):
            start = start.log() + 1.0  # softmax(start) is the same split; all 1 when equal
        if self.channel_wise:
            self.weight = nn.Parameter(start[:, None].repeat(1, channels))
        elif method in ("weighted", "softmax", "fast_normalized"):
            self.weight = nn.Parameter(start)
        elif initial is not None and any(w != initial[0] for w in initial):
            raise ValueError(f"fusion method {method!r} learns no weights: it has no initial split to set")
        else:
            self.register_parameter("weight", None)

    def normalized_weights(self) -> torch.Tensor:
        """The factors actually applied, in float32: shape ``(num_inputs,)``, or
        ``(num_inputs, channels)`` for the channel-wise methods.

        They are normalised in float32 even when the module was cast to fp16/bf16: in
        fp16 the sum of large weights overflows (> 65504), and in both ``eps`` vanishes
        next to the sum and the ratios lose digits.
        """
        if self.weight is None:
            value = 1.0 / self.num_inputs if self.method == "avg" else 1.0
            return torch.full((self.num_inputs,), value)
        weight = self.weight.float()
        if self.method in ("softmax", "channel_softmax"):
            return torch.softmax(weight, dim=0)
        if self.method in ("fast_normalized", "channel_fast_normalized"):
            w = torch.relu(weight)
            return w / (w.sum(dim=0, keepdim=True) + self.eps)
        return weight

    def frozen(self) -> nn.Module:
        """The inference-time stand-in of a learnable fusion: a :class:`FrozenFusion` (or
        :class:`FrozenChannelFusion`) holding the normalised weights as constants; ``self``
        for ``sum`` and ``avg``, which learn nothing."""
        if self.weight is None:
            return self
        weights = self.normalized_weights().detach()
        if self.channel_wise:
            return FrozenChannelFusion(weights)
        return FrozenFusion(weights.tolist())

    def input_weights(self) -> torch.Tensor:
        """The factor of each input, shape ``(num_inputs,)`` in float32 (for channel-wise
        methods the mean over channels): what logs and plots show."""
        weights = self.normalized_weights()
        return weights.mean(dim=1) if weights.dim() == 2 else weights

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            inputs: ``num_inputs`` tensors of shape ``(N, C, H, W)``.
        Returns:
            one tensor of shape ``(N, C, H, W)``.
        """
        if self.weight is None:
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            if self.method == "avg":
                out = out / self.num_inputs
            return out
        # Cast so that fp16/bf16 features under autocast are not promoted to fp32.
        weights = self.normalized_weights().to(inputs[0].dtype)
        if self.channel_wise:  # (num_inputs, C) -> (num_inputs, 1, C, 1, 1), broadcast over N, H, W
            weights = weights[:, None, :, None, None]
        out = inputs[0] * weights[0]
        for i in range(1, len(inputs)):
            out = torch.addcmul(out, inputs[i], weights[i])
        return out

    def extra_repr(self) -> str:
        channels = f", channels={self.weight.shape[1]}" if self.channel_wise else ""
        return f"num_inputs={self.num_inputs}, method={self.method}{channels}"


class FrozenFusion(nn.Module):
    """``sum_i weights[i] * inputs[i]`` with constant weights: an inference-time stand-in
    for a :class:`WeightedFusion` whose normalised weights have been read out.

    The output is always a new tensor (never one of the inputs), so the caller may
    modify it in place.
    """

    weights: List[float]

    def __init__(self, weights: List[float]):
        """
        Args:
            weights: the factor of each input, e.g. ``fusion.normalized_weights().tolist()``.
        """
        super().__init__()
        if not weights:
            raise ValueError("FrozenFusion needs at least one weight")
        self.weights = list(weights)

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """``inputs``: ``len(weights)`` tensors of shape ``(N, C, H, W)``."""
        out = torch.mul(inputs[0], self.weights[0])
        for i in range(1, len(inputs)):
            out.add_(inputs[i], alpha=self.weights[i])
        return out

    def extra_repr(self) -> str:
        return "weights=[" + ", ".join(f"{w:.4f}" for w in self.weights) + "]"


class FrozenChannelFusion(nn.Module):
    """``sum_i weight[i] * inputs[i]`` with a constant per-channel ``weight`` of shape
    ``(num_inputs, 1, C, 1, 1)``: the inference-time stand-in for a channel-wise
    :class:`WeightedFusion`. The output is always a new tensor."""

    def __init__(self, weights: torch.Tensor):
        """
        Args:
            weights: ``(num_inputs, C)``, e.g. ``fusion.normalized_weights()``.
        """
        super().__init__()
        if weights.dim() != 2 or weights.shape[0] < 1:
            raise ValueError(
                f"FrozenChannelFusion needs weights of shape (num_inputs, C), got {tuple(weights.shape)}"
            )
        self.register_buffer("weight", weights.detach().clone()[:, None, :, None, None])

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """``inputs``: ``num_inputs`` tensors of shape ``(N, C, H, W)``."""
        weight = self.weight.to(inputs[0].dtype)
        out = inputs[0] * weight[0]
        for i in range(1, len(inputs)):
            out = torch.addcmul(out, inputs[i], weight[i])
        return out

    def extra_repr(self) -> str:
        return f"num_inputs={self.weight.shape[0]}, channels={self.weight.shape[2]}"
