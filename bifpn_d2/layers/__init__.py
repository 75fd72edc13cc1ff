"""Building blocks shared by the FPN and BiFPN necks."""
from .conv import SeparableConvNorm
from .fusion import FUSION_METHODS, WeightedFusion
from .norm import ACTIVATIONS, NORMS, LayerStyle, canonical_norm, make_activation, make_norm
from .resample import ResampleToLevel, max_pool_down

__all__ = [
    "ACTIVATIONS",
    "FUSION_METHODS",
    "NORMS",
    "LayerStyle",
    "ResampleToLevel",
    "SeparableConvNorm",
    "WeightedFusion",
    "canonical_norm",
    "make_activation",
    "make_norm",
    "max_pool_down",
]
