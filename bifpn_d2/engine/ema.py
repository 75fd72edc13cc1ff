"""Weight EMA for Detectron2's trainers, on timm's ``ModelEmaV3`` (``MODEL_EMA.*`` keys of
YAML configs, ``train.model_ema`` of LazyConfig ones).

The EMA is a second copy of the model whose weights follow the trained ones,
``ema = decay * ema + (1 - decay) * weights`` after every optimizer step (buffers such as
BN statistics likewise). It lives in checkpoints under ``"ema"`` (keys ``module.<name>``).
"""

from typing import Dict, Optional

import torch
from detectron2.engine import HookBase
from timm.utils import ModelEmaV3
from torch import nn

__all__ = ["EMA_KEY", "ModelEMAHook", "build_model_ema", "check_decay", "ema_model_weights", "unwrap"]

EMA_KEY = "ema"  # the checkpoint entry of the EMA's state dict
_PREFIX = "module."  # ModelEmaV3 holds its copy as .module


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return getattr(model, "module", model)


def check_decay(key: str, decay: float) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``0 < decay < 1``."""
    if not 0 < decay < 1:
        raise ValueError(f"{key}={decay!r} is not valid; it must lie in (0, 1), e.g. 0.9998")


def build_model_ema(model: nn.Module, decay: float) -> ModelEmaV3:
    """A ``ModelEmaV3`` of ``model`` (unwrapped from DDP). Every DDP process keeps its own,
    identical EMA (the weights it follows are identical)."""
    check_decay("decay", decay)
    return ModelEmaV3(unwrap(model), decay=decay)


def ema_model_weights(checkpoint: Dict[str, object]) -> Optional[Dict[str, torch.Tensor]]:
    """The EMA weights of a loaded checkpoint as a model state dict (the names of the
    model's own parameters), or None if it holds no EMA."""
    state = checkpoint.get(EMA_KEY)
    if not isinstance(state, dict):
        return None
    return {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}


class ModelEMAHook(HookBase):
    """After every step, move the EMA towards the trainer's model. Register it before the
    checkpointing and evaluation hooks, so that they see the EMA of the step just done."""

    def __init__(self, ema: ModelEmaV3):
        self.ema = ema

    def after_step(self) -> None:
        self.ema.update(unwrap(self.trainer.model), step=self.trainer.iter + 1)
