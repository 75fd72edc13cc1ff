"""Inference-only simplifications that leave a trained model's outputs unchanged.

:func:`fold_for_inference` returns a copy of a model (a whole detector, a backbone or a
neck) in which

- every batch norm that follows a convolution is folded into that convolution's weight
  and bias, so it costs nothing at run time. Which norm follows which conv is known
  - by our own layers, which list their ``conv_norm_pairs`` (:class:`ResampleToLevel`,
    :class:`SeparableConvNorm`);
  - for Detectron2's ``Conv2d(..., norm=...)`` (ResNet, FPN with a norm), whose norm
    belongs to the conv;
  - in ``nn.Sequential`` containers: a plain conv directly followed by a norm (heads);
  - in timm's modules (EfficientNet and its blocks), which register each conv right
    before the norm applied to its output: a conv child directly followed by a batch
    norm child over its output channels (timm's ``BatchNormAct2d`` then leaves only its
    activation behind). This reads timm's public layer types only.
  Folded: ``BatchNorm2d``, ``SyncBatchNorm``, ``NaiveSyncBatchNorm`` (all with running
  statistics), ``FrozenBatchNorm2d`` and timm's norm-act variants of them;
- every module with a ``freeze_for_inference_`` method runs it: a :class:`FusionNode`
  or a :class:`WeightedFPN` replaces its learnable fusions by constant ones
  (:meth:`WeightedFusion.frozen`), and the activation after such a fusion then runs in
  place.

Outputs equal the original's up to float rounding (about 1e-6 relative). Group norm,
batch norms without running statistics and norms not preceded by a convolution stay as
they are. The copy is in eval mode with gradients off; the original is not modified.
"""

import copy
from typing import Iterator, Set, Tuple

import torch
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..layers import FrozenChannelFusion, FrozenFusion

__all__ = ["FrozenChannelFusion", "FrozenFusion", "fold_for_inference"]

# Exact types (a subclass may do more than normalise): plain norms, which leave nothing
# behind, and timm's norm + activation layers, which leave their dropout and activation.
_PLAIN_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, NaiveSyncBatchNorm, FrozenBatchNorm2d)
_NORM_ACTS = (BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct)


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


def _after_norm(norm: nn.Module) -> nn.Module:
    """What is left of a folded norm: nothing (``nn.Identity``) for a plain one; for a timm
    norm-act layer, what it does after normalising: dropout (identity in eval), then its
    activation."""
    rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if m is not None]
    rest = [m for m in rest if not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _timm_conv_norm_pairs(module: nn.Module) -> Iterator[Tuple[str, str]]:
    """(conv, norm) child names of a timm module: each conv child directly followed, in
    registration order, by a batch norm child over its output channels."""
    children = list(module.named_children())
    for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
        if (isinstance(conv, nn.Conv2d) and type(norm) in _PLAIN_NORMS + _NORM_ACTS
                and norm.num_features == conv.out_channels):
            yield conv_name, norm_name


def _conv_norm_pairs(module: nn.Module) -> Iterator[Tuple[str, str]]:
    """The (conv, norm) attribute pairs of ``module`` that can fold (see the module
    docstring); a folded norm's attribute is then replaced (None for our layers, whose
    forward skips a missing norm)."""
    if hasattr(module, "conv_norm_pairs"):
        yield from module.conv_norm_pairs
    elif type(module).__module__.startswith("timm."):
        yield from _timm_conv_norm_pairs(module)


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
        ours = hasattr(module, "conv_norm_pairs")  # our layers' forward skips a None norm
        for conv_name, norm_name in list(_conv_norm_pairs(module)):
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if conv is not None and norm is not None and _fold_into(conv, norm, done):
                setattr(module, norm_name, None if ours else _after_norm(norm))
        if isinstance(module, D2Conv2d) and module.norm is not None and _fold_into(module, module.norm, done):
            module.norm = None
        if isinstance(module, nn.Sequential):
            for index in range(len(module) - 1):
                conv, norm = module[index], module[index + 1]
                if _is_plain_conv(conv) and type(norm) in _PLAIN_NORMS and _fold_into(conv, norm, done):
                    module[index + 1] = nn.Identity()
        if hasattr(module, "freeze_for_inference_"):
            module.freeze_for_inference_()
    folded.requires_grad_(False)
    return folded
