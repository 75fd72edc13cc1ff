"""Building blocks shared by the FPN and BiFPN necks and the EfficientDet heads."""
from .conv import SeparableConv, SeparableConvNorm, conv3x3
from .fusion import CHANNEL_METHODS, FUSION_METHODS, FrozenChannelFusion, FrozenFusion, WeightedFusion
from .norm import ACTIVATIONS, NORMS, ChannelLayerNorm, LayerStyle, canonical_norm, make_activation, make_norm
from .resample import ResampleToLevel, max_pool_down

__all__ = [
    "ACTIVATIONS",
    "CHANNEL_METHODS",
    "ChannelLayerNorm",
    "FUSION_METHODS",
    "FrozenChannelFusion",
    "FrozenFusion",
    "NORMS",
    "LayerStyle",
    "ResampleToLevel",
    "SeparableConv",
    "SeparableConvNorm",
    "WeightedFusion",
    "canonical_norm",
    "conv3x3",
    "make_activation",
    "make_norm",
    "max_pool_down",
]
