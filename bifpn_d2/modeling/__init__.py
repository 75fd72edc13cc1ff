"""Backbones (bottom-up networks, pyramid necks, their registered builders) and the
EfficientDet meta-architecture."""
from .bifpn import BiFPN
from .builders import *  # noqa: F401,F403  (registers the builders)
from .builders import __all__ as _builders
from .efficientdet import EFFICIENTDET_ANCHOR_SHAPES, EfficientDet, EfficientDetAnchorGenerator
from .efficientdet_head import EfficientDetHead, PredictionNet
from .efficientnet import EfficientNetBackbone
from .fold import FrozenChannelFusion, FrozenFusion, fold_for_inference
from .fpn import WeightedFPN
from .pyramid_backbone import PyramidBackbone
from .pyramid_cell import CellOptions, FusionNode, PyramidCell
from .pyramid_graph import GRAPHS, PyramidNode, bifpn_nodes, build_graph, panet_nodes, pyramid_levels
from .top_blocks import ConvP6P7TopBlock, EfficientDetTopBlock, MaxPoolTopBlock

__all__ = [
    "BiFPN",
    "CellOptions",
    "ConvP6P7TopBlock",
    "EFFICIENTDET_ANCHOR_SHAPES",
    "EfficientDet",
    "EfficientDetAnchorGenerator",
    "EfficientDetHead",
    "EfficientDetTopBlock",
    "EfficientNetBackbone",
    "FrozenChannelFusion",
    "FrozenFusion",
    "FusionNode",
    "GRAPHS",
    "MaxPoolTopBlock",
    "PyramidBackbone",
    "PredictionNet",
    "PyramidCell",
    "PyramidNode",
    "WeightedFPN",
    "bifpn_nodes",
    "build_graph",
    "fold_for_inference",
    "panet_nodes",
    "pyramid_levels",
] + list(_builders)
