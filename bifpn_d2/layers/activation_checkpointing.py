"""Activation checkpointing: a module keeps only its inputs from the forward pass of a
training step and recomputes its activations in the backward pass (less memory, more
time; google/automl's ``grad_checkpoint``, timm's ``set_grad_checkpointing``).

A module opts in by deriving from :class:`ActivationCheckpointing` and writing its
computation as ``_forward(features: List[Tensor]) -> List[Tensor]``. Unlike a plain
``torch.utils.checkpoint`` call, the recomputation leaves the module's buffers (batch-norm
running statistics and their counters) as the forward pass left them: they are updated
once per step, as without checkpointing, not twice.
"""
from typing import Callable, List

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ActivationCheckpointing", "checkpoint_activations"]


def checkpoint_activations(
    function: Callable[[List[torch.Tensor]], List[torch.Tensor]],
    features: List[torch.Tensor],
    stateful: nn.Module,
) -> List[torch.Tensor]:
    """``function(features)``, its activations recomputed in the backward pass.

    Args:
        function: the computation; it may update buffers of ``stateful``.
        features: its input maps.
        stateful: the module whose buffers the recomputation must not change (they are
            restored after it, also when autograd stops the recomputation early).
    Returns:
        ``function(features)``: same values and gradients as without checkpointing.
    """
    calls = 0

    def run(inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == 1:  # the forward pass
            return function(inputs)
        kept = [buffer.clone() for buffer in stateful.buffers()]
        try:
            return function(inputs)
        finally:
            with torch.no_grad():
                for buffer, value in zip(stateful.buffers(), kept):
                    buffer.copy_(value)

    return checkpoint(run, features, use_reentrant=False)


class ActivationCheckpointing:
    """Mixin of an ``nn.Module`` whose ``_forward(features)`` can be checkpointed:
    ``set_grad_checkpointing(True)`` turns it on (off by default; it acts only in training
    mode with gradients enabled, never in TorchScript). The module's ``__init__`` calls
    ``self.set_grad_checkpointing(False)``."""

    grad_checkpointing: bool

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if recompute and not torch.jit.is_scripting():
            return self._forward_checkpointed(features)
        return self._forward(features)

    @torch.jit.unused
    def _forward_checkpointed(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        return checkpoint_activations(self._forward, features, self)
