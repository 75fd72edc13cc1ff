"""The ``@BACKBONE_REGISTRY`` builders: the only code that reads ``cfg``.

Every pyramid builder exists in two flavours, as in Detectron2:

- ``build_<bottom-up>_<neck>_backbone``: R-CNN pyramid, P2-P6 from ``res2..res5``
  (FPN: P6 by max-pool), as ``build_resnet_fpn_backbone``;
- ``build_retinanet_<bottom-up>_<neck>_backbone``: RetinaNet pyramid, P3-P7 from
  ``res3..res5`` (FPN: P6/P7 convs from C5), as ``build_retinanet_resnet_fpn_backbone``.

The pyramid's inputs are ``MODEL.FPN.IN_FEATURES`` in both cases; the flavour only sets
the default top block and ``MAX_LEVEL``.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone, build_resnet_backbone

from ..config import check_choice, check_non_negative, check_positive
from ..layers import ACTIVATIONS, FUSION_METHODS, NORMS
from .bifpn import CONV_INITS, BiFPN, pyramid_levels
from .efficientnet import EFFICIENTNET_NAMES, EFFICIENTNET_NORMS, EfficientNetBackbone
from .fpn import WeightedFPN
from .pyramid_graph import GRAPHS
from .top_blocks import TOP_BLOCKS, ConvP6P7TopBlock, EfficientDetTopBlock, MaxPoolTopBlock

__all__ = [
    "build_efficientnet_backbone",
    "build_resnet_bifpn_backbone",
    "build_retinanet_resnet_bifpn_backbone",
    "build_efficientnet_bifpn_backbone",
    "build_retinanet_efficientnet_bifpn_backbone",
    "build_resnet_weighted_fpn_backbone",
    "build_retinanet_resnet_weighted_fpn_backbone",
    "build_efficientnet_weighted_fpn_backbone",
    "build_retinanet_efficientnet_weighted_fpn_backbone",
]

# Per flavour: number of levels added above the last input, and the FPN top block.
_FLAVOURS = {"rcnn": (1, "maxpool"), "retinanet": (2, "p6p7_c5")}
# MODEL.BIFPN.TOP_BLOCK: EfficientDet's max-pool levels or RetinaNet's strided convs from C5.
BIFPN_TOP_BLOCKS = ("efficientdet", "p6p7_c5")
# MODEL.FPN.NORM goes to Detectron2's get_norm (lateral and output convs), which knows these.
_D2_NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN")


@BACKBONE_REGISTRY.register()
def build_efficientnet_backbone(cfg, input_shape: ShapeSpec) -> EfficientNetBackbone:
    """timm EfficientNet alone (outputs ``c1``..``c5``); reads ``MODEL.EFFICIENTNET.*``
    and ``MODEL.BACKBONE.FREEZE_AT``."""
    ec = cfg.MODEL.EFFICIENTNET
    check_choice("MODEL.EFFICIENTNET.NAME", ec.NAME, EFFICIENTNET_NAMES)
    check_choice("MODEL.EFFICIENTNET.NORM", ec.NORM, EFFICIENTNET_NORMS)
    check_choice("MODEL.BACKBONE.FREEZE_AT", cfg.MODEL.BACKBONE.FREEZE_AT, range(6))
    if input_shape.channels != 3:
        raise ValueError(f"EfficientNet takes 3-channel images, got {input_shape.channels} (MODEL.PIXEL_MEAN)")
    try:
        return EfficientNetBackbone(ec.NAME, None, cfg.MODEL.BACKBONE.FREEZE_AT, ec.NORM,
                                    ec.DROP_PATH_RATE, ec.WEIGHTS)
    except (OSError, ValueError) as e:
        if not ec.WEIGHTS:
            raise
        raise ValueError(f"MODEL.EFFICIENTNET.WEIGHTS={ec.WEIGHTS!r}: {e}") from e


def _bottom_up(cfg, input_shape: ShapeSpec, kind: str) -> Backbone:
    return build_resnet_backbone(cfg, input_shape) if kind == "resnet" else build_efficientnet_backbone(cfg, input_shape)


def _input_levels(cfg, bottom_up: Backbone, kind: str) -> list:
    try:
        return pyramid_levels(bottom_up, cfg.MODEL.FPN.IN_FEATURES)
    except ValueError as e:
        hint = " (for ResNet, MODEL.RESNETS.OUT_FEATURES lists what it produces)" if kind == "resnet" else ""
        raise ValueError(f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)}: {e}{hint}") from None


def _build_bifpn(cfg, input_shape: ShapeSpec, kind: str, flavour: str) -> BiFPN:
    bc = cfg.MODEL.BIFPN
    check_positive("MODEL.BIFPN.OUT_CHANNELS", bc.OUT_CHANNELS)
    check_positive("MODEL.BIFPN.NUM_CELLS", bc.NUM_CELLS)
    check_choice("MODEL.BIFPN.GRAPH", bc.GRAPH, sorted(GRAPHS))
    check_choice("MODEL.BIFPN.FUSION", bc.FUSION, FUSION_METHODS)
    check_choice("MODEL.BIFPN.ACTIVATION", bc.ACTIVATION, ACTIVATIONS)
    check_choice("MODEL.BIFPN.NORM", bc.NORM, NORMS)
    check_non_negative("MODEL.FPN.SIZE_DIVISIBILITY", cfg.MODEL.FPN.SIZE_DIVISIBILITY)
    bottom_up = _bottom_up(cfg, input_shape, kind)
    levels = _input_levels(cfg, bottom_up, kind)
    if levels[0] < 2:
        raise ValueError(f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)} start at P{levels[0]}; "
                         "BiFPN levels lie within P2-P8")
    check_choice("MODEL.BIFPN.TOP_BLOCK", bc.TOP_BLOCK, BIFPN_TOP_BLOCKS)
    check_choice("MODEL.BIFPN.CONV_INIT", bc.CONV_INIT, CONV_INITS)
    max_level = bc.MAX_LEVEL or levels[-1] + _FLAVOURS[flavour][0]
    allowed = list(range(max(levels[-1], levels[0] + 2), 9))
    if max_level not in allowed:
        raise ValueError(
            f"MODEL.BIFPN.MAX_LEVEL={bc.MAX_LEVEL} gives P{levels[0]}-P{max_level} over MODEL.FPN.IN_FEATURES="
            f"{list(cfg.MODEL.FPN.IN_FEATURES)}; a BiFPN needs at least 3 levels within P2-P8: "
            f"allowed values: {[0] + allowed} (0 = P{levels[-1] + _FLAVOURS[flavour][0]})"
        )
    num_extra = max_level - levels[-1]
    top_block = None  # the BiFPN's default: EfficientDet's max-pool levels
    if bc.TOP_BLOCK == "p6p7_c5" and num_extra > 0:
        if num_extra > 2:
            raise ValueError(f"MODEL.BIFPN.TOP_BLOCK='p6p7_c5' makes at most 2 levels above the last input, "
                             f"MODEL.BIFPN.MAX_LEVEL={max_level} needs {num_extra}; use 'efficientdet' for more")
        last_input = cfg.MODEL.FPN.IN_FEATURES[-1]
        top_block = ConvP6P7TopBlock(bottom_up.output_shape()[last_input].channels, bc.OUT_CHANNELS,
                                     last_input, num_extra)
    return BiFPN(
        bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=bc.OUT_CHANNELS,
        num_cells=bc.NUM_CELLS,
        max_level=max_level,
        top_block=top_block,
        graph=bc.GRAPH,
        fusion=bc.FUSION,
        fusion_eps=bc.FUSION_EPS,
        activation=bc.ACTIVATION,
        separable_conv=bc.SEPARABLE_CONV,
        norm=bc.NORM,
        norm_eps=bc.NORM_EPS,
        norm_momentum=bc.NORM_MOMENTUM,
        same_padding=bc.SAME_PADDING,
        bias_before_norm=bc.BIAS_BEFORE_NORM,
        size_divisibility=cfg.MODEL.FPN.SIZE_DIVISIBILITY,
        conv_init=bc.CONV_INIT,
    )


def _build_fpn(cfg, input_shape: ShapeSpec, kind: str, flavour: str) -> WeightedFPN:
    fc = cfg.MODEL.FPN
    check_positive("MODEL.FPN.OUT_CHANNELS", fc.OUT_CHANNELS)
    check_choice("MODEL.FPN.FUSE_TYPE", fc.FUSE_TYPE, FUSION_METHODS)
    check_non_negative("MODEL.FPN.SIZE_DIVISIBILITY", fc.SIZE_DIVISIBILITY)
    num_extra, default_top = _FLAVOURS[flavour]
    top_name = fc.TOP_BLOCK or default_top
    check_choice("MODEL.FPN.TOP_BLOCK", top_name, TOP_BLOCKS + ("",))
    # The efficientdet top block also passes it to our make_norm: only names both know.
    fpn_norms = [n for n in _D2_NORMS if top_name != "efficientdet" or n in NORMS]
    check_choice("MODEL.FPN.NORM", fc.NORM, fpn_norms)
    bottom_up = _bottom_up(cfg, input_shape, kind)
    levels = _input_levels(cfg, bottom_up, kind)
    last_input = fc.IN_FEATURES[-1]
    last_channels = bottom_up.output_shape()[last_input].channels
    last_output = f"p{levels[-1]}"
    if top_name == "maxpool":
        top_block = MaxPoolTopBlock(last_output)
    elif top_name == "p6p7_c5":
        top_block = ConvP6P7TopBlock(last_channels, fc.OUT_CHANNELS, last_input)
    elif top_name == "p6p7_p5":
        top_block = ConvP6P7TopBlock(fc.OUT_CHANNELS, fc.OUT_CHANNELS, last_output)
    else:
        top_block = EfficientDetTopBlock(last_channels, fc.OUT_CHANNELS, num_extra, last_input, fc.NORM)
    return WeightedFPN(bottom_up, fc.IN_FEATURES, fc.OUT_CHANNELS, fc.NORM, top_block, fc.FUSE_TYPE, fc.FUSION_EPS,
                       fc.SIZE_DIVISIBILITY)


@BACKBONE_REGISTRY.register()
def build_resnet_bifpn_backbone(cfg, input_shape: ShapeSpec) -> BiFPN:
    """ResNet + BiFPN, R-CNN pyramid (P2-P6 by default)."""
    return _build_bifpn(cfg, input_shape, "resnet", "rcnn")


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_bifpn_backbone(cfg, input_shape: ShapeSpec) -> BiFPN:
    """ResNet + BiFPN, RetinaNet pyramid (P3-P7 by default)."""
    return _build_bifpn(cfg, input_shape, "resnet", "retinanet")


@BACKBONE_REGISTRY.register()
def build_efficientnet_bifpn_backbone(cfg, input_shape: ShapeSpec) -> BiFPN:
    """EfficientNet + BiFPN, R-CNN pyramid (P2-P6 by default)."""
    return _build_bifpn(cfg, input_shape, "efficientnet", "rcnn")


@BACKBONE_REGISTRY.register()
def build_retinanet_efficientnet_bifpn_backbone(cfg, input_shape: ShapeSpec) -> BiFPN:
    """EfficientNet + BiFPN, RetinaNet pyramid (P3-P7 by default): EfficientDet."""
    return _build_bifpn(cfg, input_shape, "efficientnet", "retinanet")


@BACKBONE_REGISTRY.register()
def build_resnet_weighted_fpn_backbone(cfg, input_shape: ShapeSpec) -> WeightedFPN:
    """ResNet + our FPN, R-CNN pyramid (P2-P6, max-pool P6)."""
    return _build_fpn(cfg, input_shape, "resnet", "rcnn")


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_weighted_fpn_backbone(cfg, input_shape: ShapeSpec) -> WeightedFPN:
    """ResNet + our FPN, RetinaNet pyramid (P3-P7, P6/P7 convs from C5)."""
    return _build_fpn(cfg, input_shape, "resnet", "retinanet")


@BACKBONE_REGISTRY.register()
def build_efficientnet_weighted_fpn_backbone(cfg, input_shape: ShapeSpec) -> WeightedFPN:
    """EfficientNet + our FPN, R-CNN pyramid."""
    return _build_fpn(cfg, input_shape, "efficientnet", "rcnn")


@BACKBONE_REGISTRY.register()
def build_retinanet_efficientnet_weighted_fpn_backbone(cfg, input_shape: ShapeSpec) -> WeightedFPN:
    """EfficientNet + our FPN, RetinaNet pyramid."""
    return _build_fpn(cfg, input_shape, "efficientnet", "retinanet")
