"""Building blocks shared by the FPN and BiFPN necks and the EfficientDet heads."""
from .conv import SeparableConv, SeparableConvNorm, conv3x3
from .fusion import FUSION_METHODS, WeightedFusion
from .norm import ACTIVATIONS, NORMS, make_activation, make_norm
from .resample import MaxPoolDown, ResampleToLevel
from .same_padding import pad_same

__all__ = [
    "ACTIVATIONS",
    "FUSION_METHODS",
    "NORMS",
    "MaxPoolDown",
    "ResampleToLevel",
    "SeparableConv",
    "SeparableConvNorm",
    "WeightedFusion",
    "conv3x3",
    "make_activation",
    "make_norm",
    "pad_same",
]
