"""timm's EfficientNet (B0-B7 and the TF-ported ``tf_`` variants) as a Detectron2 backbone.

Outputs, channels and strides come from timm's ``feature_info`` metadata, never from
hard-coded tables: output ``c{l}`` is the last block at stride ``2**l`` (``c1``..``c5``,
the "C" maps of the FPN paper).
"""
from collections.abc import Sequence
from typing import Dict, List, Optional

import timm
import torch
from detectron2.modeling.backbone import Backbone
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
from torch import nn

from ..checkpoint import timm_pretrained_kwargs, unreadable
from ..layers.activation_checkpointing import checkpoint_activations
from ..layers.checks import check_choice

__all__ = ["EFFICIENTNET_NAMES", "EFFICIENTNET_NORMS", "FEATURE_NAMES", "EfficientNetBackbone"]

EFFICIENTNET_NAMES = tuple(f"{prefix}efficientnet_b{i}" for prefix in ("", "tf_") for i in range(8)) + tuple(
    f"tf_efficientnet_lite{i}" for i in range(5)  # EfficientDet-Lite's bottom-ups
)
# Detectron2's names of the norms timm's blocks can be converted to ("nnSyncBN" = "SyncBN").
EFFICIENTNET_NORMS = ("BN", "FrozenBN", "SyncBN", "nnSyncBN")
FEATURE_NAMES = ("c1", "c2", "c3", "c4", "c5")  # strides 2..32, timm's feature indices 0..4


class EfficientNetBackbone(Backbone):
    """``(N, 3, H, W) -> {"c1": (N, C1, H/2, W/2), ..., "c5": (N, C5, H/32, W/32)}``
    (sizes rounded up), restricted to ``out_features``: only the stages up to the last of
    them are built, and timm returns only those maps (its ``out_indices``).

    ``set_grad_checkpointing(True)`` recomputes the activations of each stage of blocks
    (``body.blocks[i]``; not the stem) in the backward pass of a training step: the same
    outputs, gradients and norm statistics, less memory, each stage's forward run twice."""

    def __init__(
        self,
        model_name: str = "efficientnet_b0",
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
        norm: str = "BN",
        drop_path_rate: float = 0.0,
        weights: str = "",
    ):
        """
        Args:
            model_name: one of :data:`EFFICIENTNET_NAMES` (timm model names).
            out_features: which of ``c1``..``c5`` to return (default: all).
            freeze_at: 0 trains everything; ``k >= 1`` freezes the stem and every block
                whose output stride is at most ``2**k`` (Detectron2's ``FREEZE_AT``: 2
                freezes up to ``c2``), turning their norms into frozen ones.
            norm: ``BN``, ``FrozenBN`` (all norms frozen) or ``SyncBN``.
            drop_path_rate: stochastic depth rate (EfficientDet trains with 0.2).
            weights: local file with ImageNet weights, loaded by timm (``.pth`` or
                ``.safetensors`` state dict, or a timm training checkpoint; classifier keys
                are ignored, any other missing or unexpected key is an error); "" keeps
                the random init. Nothing is downloaded.
        """
        super().__init__()
        check_choice("model_name", model_name, EFFICIENTNET_NAMES)
        check_choice("norm", norm, EFFICIENTNET_NORMS)
        out_features = list(out_features) if out_features is not None else list(FEATURE_NAMES)
        unknown = [f for f in out_features if f not in FEATURE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"out_features {out_features} must be among the outputs {list(FEATURE_NAMES)} "
                             f"of {model_name}")
        out_features = sorted(set(out_features), key=FEATURE_NAMES.index)
        check_choice("freeze_at", freeze_at, range(len(FEATURE_NAMES) + 1))
        out_indices = [FEATURE_NAMES.index(f) for f in out_features]
        body = _create_body(model_name, out_indices, drop_path_rate, weights)
        stages = body.feature_info.info  # every stage, whether returned or not
        # Blocks after the last returned stage would run for nothing: drop them.
        last_block = int(stages[FEATURE_NAMES.index(out_features[-1])]["module"].split(".")[1])
        body.blocks = body.blocks[: last_block + 1]

        if norm == "FrozenBN":
            body = freeze_batch_norm_2d(body)
        elif norm in ("SyncBN", "nnSyncBN"):
            body = convert_sync_batchnorm(body)
        if freeze_at > 0:
            _freeze_up_to(body, stages[freeze_at - 1]["module"])

        self.body = body
        self.model_name = model_name
        self._out_features = out_features
        returned = {FEATURE_NAMES[d["index"]]: d for d in body.feature_info.get_dicts()}
        self._out_feature_channels = {n: returned[n]["num_chs"] for n in out_features}
        self._out_feature_strides = {n: returned[n]["reduction"] for n in out_features}
        # The stage of blocks ("blocks.i" in timm's metadata) that ends each returned map.
        self._output_stages = [int(returned[n]["module"].split(".")[1]) for n in out_features]
        self.set_grad_checkpointing(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of each stage of blocks on or off
        (``MODEL.EFFICIENTNET.CHECKPOINT_ACTIVATIONS`` in a config). timm's own option is
        not used: its recomputation updates the batch-norm statistics a second time."""
        self.grad_checkpointing = bool(enable)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if recompute and not torch.jit.is_scripting():
            features = self._forward_checkpointed(x)
        else:
            features = self.body(x)
        outputs: Dict[str, torch.Tensor] = {}
        for name, feature in zip(self._out_features, features):
            outputs[name] = feature
        return outputs

    @torch.jit.unused
    def _forward_checkpointed(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``self.body(x)`` (timm's stem, then its stages of blocks in order), each stage
        checkpointed."""
        x = self.body.bn1(self.body.conv_stem(x))
        features = []
        for i, stage in enumerate(self.body.blocks):
            x = checkpoint_activations(lambda maps, stage=stage: [stage(maps[0])], [x], stage)[0]
            if i in self._output_stages:
                features.append(x)
        return features


def _create_body(model_name: str, out_indices: List[int], drop_path_rate: float, weights: str) -> nn.Module:
    """timm's feature extractor, with the weights of the local file ``weights`` if given
    (timm's ``pretrained=True`` with the file as its source: see
    :func:`~bifpn_d2.checkpoint.timm_pretrained_kwargs`).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        ValueError: ``weights`` is unreadable or does not match the model.
    """
    pretrained = timm_pretrained_kwargs(weights) if weights else {}
    try:
        return timm.create_model(
            model_name,
            features_only=True,
            out_indices=out_indices,
            drop_path_rate=drop_path_rate,
            **pretrained,
        )
    except ValueError:  # our key check, or timm's own reading of a bad file
        raise
    except Exception as e:  # torch and safetensors raise many types for a corrupt file
        if not weights:
            raise
        raise unreadable(weights, e) from None


def _freeze_up_to(body: nn.Module, last_frozen: str) -> None:
    """Freeze the stem and every block up to ``last_frozen`` (``"blocks.i"``), turning
    their batch norms into frozen ones."""
    last_block = min(int(last_frozen.split(".")[1]), len(body.blocks) - 1)
    parts = [body.conv_stem, body.bn1] + [body.blocks[i] for i in range(last_block + 1)]
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
    body.bn1 = freeze_batch_norm_2d(body.bn1)
    for i in range(last_block + 1):
        body.blocks[i] = freeze_batch_norm_2d(body.blocks[i])
