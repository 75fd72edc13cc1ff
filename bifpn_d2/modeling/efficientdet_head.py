"""EfficientDet's class and box nets (Tan et al. 2020, section 3.3), as effdet's ``HeadNet``.

Each net runs on every pyramid level with the same convolution weights but its own
normalisation per level::

    for each level l:  x = P_l
        num_repeats x:  x = act(norm[l][r](conv[r](x)))     conv: separable 3x3, width C
        out_l = predictor(x)                                 separable 3x3, with bias

The class net predicts ``num_anchors * num_classes`` logits per location (anchor-major:
channel ``a * num_classes + k``), the box net ``num_anchors * 4`` regressions in
Detectron2's ``Box2BoxTransform`` order ``(dx, dy, dw, dh)`` (channel ``a * 4 + j``): the
layout that Detectron2's dense detectors read. effdet orders its box channels
``(dy, dx, dh, dw)``; :mod:`bifpn_d2.convert` permutes them when it converts weights.
"""
import math
from typing import List, Tuple

import torch
from torch import nn

from ..layers import LayerStyle, conv3x3, make_activation
from ..layers.activation_checkpointing import ActivationCheckpointing

__all__ = ["EfficientDetHead", "PredictionNet"]


class PredictionNet(ActivationCheckpointing, nn.Module):
    """One net: a list of ``(N, C, H_l, W_l)`` maps, one per level, to a list of
    ``(N, num_outputs, H_l, W_l)``. ``set_grad_checkpointing(True)`` recomputes its
    activations in the backward pass (see :class:`ActivationCheckpointing`)."""

    def __init__(
        self,
        channels: int,
        num_levels: int,
        num_outputs: int,
        num_repeats: int,
        separable: bool = True,
        style: LayerStyle = LayerStyle(),
        activation: str = "swish",
        predictor_bias: float = 0.0,
    ):
        """
        Args:
            channels: width ``C`` of the input maps and of the repeated convs.
            num_levels: how many pyramid levels it runs on (one norm per level and repeat).
            num_outputs: channels of the prediction per location.
            num_repeats: convs before the predictor (EfficientDet's ``D_box = D_class``).
            separable: depthwise-separable 3x3 convs (EfficientDet's) or dense ones.
            style: the per-level norm, and whether the repeated convs get a bias anyway
                (the one TF checkpoints carry, see :class:`~bifpn_d2.layers.LayerStyle`).
            activation: after each norm (see :func:`make_activation`).
            predictor_bias: initial bias of the predictor (the class prior for logits).
        """
        super().__init__()
        if num_levels < 1 or num_repeats < 0:
            raise ValueError(f"num_levels={num_levels} must be >= 1 and num_repeats={num_repeats} >= 0")
        self.convs = nn.ModuleList(
            conv3x3(channels, channels, separable, style.conv_bias) for _ in range(num_repeats)
        )
        # norms[level][repeat]: levels first, so that forward iterates over modules (TorchScript).
        self.norms = nn.ModuleList(
            nn.ModuleList(style.make_norm(channels) or nn.Identity() for _ in range(num_repeats))
            for _ in range(num_levels)
        )
        self.act = make_activation(activation)
        self.predictor = conv3x3(channels, num_outputs, separable, bias=True)
        self._init_weights(separable, predictor_bias)
        self.set_grad_checkpointing(False)

    def _init_weights(self, separable: bool, predictor_bias: float) -> None:
        """EfficientDet's: separable convs normal with variance 1 / fan-in, dense ones normal
        with std 0.01; biases 0 except the predictor's."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if separable:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                else:
                    nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.predictor.pointwise if separable else self.predictor
        nn.init.constant_(last.bias, predictor_bias)

    def _forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        if len(features) != len(self.norms):
            raise ValueError(f"got {len(features)} levels, the net was built for {len(self.norms)}")
        outputs: List[torch.Tensor] = []
        for level, level_norms in enumerate(self.norms):
            x = features[level]
            for conv, norm in zip(self.convs, level_norms):
                x = self.act(norm(conv(x)))
            outputs.append(self.predictor(x))
        return outputs


class EfficientDetHead(nn.Module):
    """The class net and the box net over ``num_levels`` maps of ``in_channels`` channels.

    ``forward(features)`` returns ``(logits, box_regressions)``, lists over levels of
    ``(N, A * num_classes, H_l, W_l)`` and ``(N, A * 4, H_l, W_l)``, as Detectron2's
    ``RetinaNetHead`` does.
    """

    def __init__(
        self,
        in_channels: int,
        num_levels: int,
        num_anchors: int,
        num_classes: int,
        num_repeats: int,
        separable: bool = True,
        style: LayerStyle = LayerStyle(),
        activation: str = "swish",
        prior_prob: float = 0.01,
    ):
        """
        Args:
            in_channels: pyramid width (EfficientDet: the BiFPN width).
            num_levels: number of pyramid levels (5 for P3-P7).
            num_anchors: anchors per location (EfficientDet: 3 scales x 3 shapes = 9).
            num_classes: object classes (no background class).
            num_repeats: convs per net before the predictor (3, 3, 3, 4, 4, 4, 5, 5 for D0-D7).
            separable, style, activation: see :class:`PredictionNet` (the default style is
                EfficientDet's BN, eps 1e-3, momentum 0.01).
            prior_prob: initial foreground probability of every logit (bias
                ``-log((1 - p) / p)``).
        """
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob={prior_prob} must lie strictly between 0 and 1")
        common = dict(channels=in_channels, num_levels=num_levels, num_repeats=num_repeats,
                      separable=separable, style=style, activation=activation)
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.class_net = PredictionNet(num_outputs=num_anchors * num_classes,
                                       predictor_bias=-math.log((1 - prior_prob) / prior_prob), **common)
        self.box_net = PredictionNet(num_outputs=num_anchors * 4, **common)

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        return self.class_net(features), self.box_net(features)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the activations of both nets in the backward pass (less memory in
        training, more time); see :class:`ActivationCheckpointing`."""
        self.class_net.set_grad_checkpointing(enable)
        self.box_net.set_grad_checkpointing(enable)
