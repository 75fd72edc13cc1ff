"""Inference-only simplifications that leave a trained model's outputs unchanged.

:func:`fold_for_inference` returns a copy of a model (a whole detector, a backbone or a
neck) in which

- every batch norm that follows a convolution is folded into that convolution's weight
  and bias, so it costs nothing at run time: in :class:`ResampleToLevel` and
  :class:`SeparableConvNorm` (our necks), Detectron2's ``Conv2d(..., norm=...)`` (ResNet,
  FPN with a norm), ``nn.Sequential`` containers (a ``Conv2d`` directly followed by a
  norm, as in heads) and timm's EfficientNet blocks (whose ``BatchNormAct2d`` leaves only
  its activation behind). Folded: ``BatchNorm2d``, ``SyncBatchNorm``,
  ``NaiveSyncBatchNorm`` (all with running statistics), ``FrozenBatchNorm2d`` and timm's
  norm-act variants of them;
- every learnable :class:`WeightedFusion` of a :class:`FusionNode` or a
  :class:`WeightedFPN` becomes a :class:`FrozenFusion` holding its normalised weights as
  Python floats (no ReLU/softmax/division and no tensor indexing per call) that
  accumulates in place; a channel-wise one becomes a :class:`FrozenChannelFusion`
  holding its normalised ``(num_inputs, channels)`` weights as a buffer;
- the activation after such a fusion in a :class:`FusionNode` runs in place on the
  fused map, which nothing else references.

Outputs equal the original's up to float rounding (about 1e-6 relative). Group norm,
batch norms without running statistics and norms not preceded by a convolution stay as
they are. The copy is in eval mode with gradients off; the original is not modified.
"""

import copy
from typing import Dict, List, Set, Tuple, Type

import torch
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual
from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..layers import ResampleToLevel, SeparableConvNorm, WeightedFusion
from .fpn import WeightedFPN
from .pyramid_cell import FusionNode

__all__ = ["FrozenChannelFusion", "FrozenFusion", "fold_for_inference"]

# Exact types (a subclass may do more than normalise): plain norms, which leave nothing
# behind, and timm's norm + activation layers, which leave their dropout and activation.
_PLAIN_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, NaiveSyncBatchNorm, FrozenBatchNorm2d)
_NORM_ACTS = (BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct)

# timm EfficientNet building blocks, by type (a renamed class fails loudly at import):
# (conv, the norm right after it) attribute pairs.
_TIMM_CONV_NORMS: Dict[Type[nn.Module], Tuple[Tuple[str, str], ...]] = {
    EfficientNet: (("conv_stem", "bn1"),),
    EfficientNetFeatures: (("conv_stem", "bn1"),),
    ConvBnAct: (("conv", "bn1"),),
    DepthwiseSeparableConv: (("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")),
    InvertedResidual: (("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    EdgeResidual: (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
}


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


def _has_statistics(norm: nn.Module) -> bool:
    """Whether ``norm`` is a batch norm that normalises with running statistics in eval
    mode (so that it is a per-channel affine map that a conv can absorb)."""
    return type(norm) in _PLAIN_NORMS + _NORM_ACTS and norm.running_var is not None


@torch.no_grad()
def _fold_into(conv: nn.Module, norm: nn.Module, done: Set[int]) -> bool:
    """Fold ``norm`` into the ``nn.Conv2d`` ``conv`` in place (PyTorch's
    ``fuse_conv_bn_weights`` arithmetic); False (and nothing changed) if either cannot
    take part, or if ``conv`` (a module shared by several parents) is in ``done``, the ids
    of the convs folded so far, to which it is added."""
    if not isinstance(conv, nn.Conv2d) or id(conv) in done or not _has_statistics(norm):
        return False
    done.add(id(conv))
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    return True


def _is_plain_conv(module: nn.Module) -> bool:
    """Whether ``module``'s output is its convolution's, with nothing applied after it."""
    if isinstance(module, D2Conv2d):
        return module.norm is None and module.activation is None
    return type(module) is nn.Conv2d


def _after_norm(norm_act: nn.Module) -> nn.Module:
    """What a timm norm-act layer does after normalising: dropout (identity in eval),
    then its activation."""
    rest = [m for m in (getattr(norm_act, "drop", None), getattr(norm_act, "act", None)) if m is not None]
    rest = [m for m in rest if not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _freeze_fusion(fusion: nn.Module) -> nn.Module:
    """A :class:`FrozenFusion` (or :class:`FrozenChannelFusion`) for a learnable
    :class:`WeightedFusion`, else ``fusion``."""
    if isinstance(fusion, WeightedFusion) and fusion.weight is not None:
        weights = fusion.normalized_weights().detach()
        if fusion.channel_wise:
            return FrozenChannelFusion(weights)
        return FrozenFusion(weights.tolist())
    return fusion


def fold_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with norms folded into convs and fusion weights
    frozen (see the module docstring); ``model`` itself is left untouched.

    Example::

        fast = fold_for_inference(model)
        with torch.no_grad():
            outputs = fast(images)  # equal to model.eval()(images) up to ~1e-6
    """
    folded = copy.deepcopy(model).eval()
    done: Set[int] = set()
    for module in list(folded.modules()):
        if isinstance(module, (ResampleToLevel, SeparableConvNorm, D2Conv2d)):
            if module.norm is not None and type(module.norm) in _PLAIN_NORMS:
                conv = module if isinstance(module, D2Conv2d) else module.conv
                if conv is not None and _fold_into(conv, module.norm, done):
                    module.norm = None
        if isinstance(module, nn.Sequential):
            for index in range(len(module) - 1):
                conv, norm = module[index], module[index + 1]
                if _is_plain_conv(conv) and type(norm) in _PLAIN_NORMS and _fold_into(conv, norm, done):
                    module[index + 1] = nn.Identity()
        for conv_name, norm_name in _TIMM_CONV_NORMS.get(type(module), ()):
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if conv is not None and norm is not None and _fold_into(conv, norm, done):
                setattr(module, norm_name, _after_norm(norm) if type(norm) in _NORM_ACTS else nn.Identity())
        if isinstance(module, FusionNode):
            module.fusion = _freeze_fusion(module.fusion)
            frozen = isinstance(module.fusion, (FrozenFusion, FrozenChannelFusion))
            if frozen and isinstance(module.act, (nn.SiLU, nn.ReLU, nn.ReLU6)):
                module.act.inplace = True
        elif isinstance(module, WeightedFPN):
            # The fusions are both named children (fpn_fusion<level>) and list entries.
            frozen = {id(f): _freeze_fusion(f) for f in module.fusions}
            for name, child in list(module.named_children()):
                if id(child) in frozen:
                    setattr(module, name, frozen[id(child)])
            module.fusions = [frozen[id(f)] for f in module.fusions]
    folded.requires_grad_(False)
    return folded
