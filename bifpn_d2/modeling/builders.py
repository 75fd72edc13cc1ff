"""The ``@BACKBONE_REGISTRY`` builders: the only code that reads ``cfg``.

Every pyramid builder exists in two flavours, as in Detectron2:

- ``build_<bottom-up>_<neck>_backbone``: R-CNN pyramid, P2-P6 from ``res2..res5``
  (FPN: P6 by max-pool), as ``build_resnet_fpn_backbone``;
- ``build_retinanet_<bottom-up>_<neck>_backbone``: RetinaNet pyramid, P3-P7 from
  ``res3..res5`` (FPN: P6/P7 convs from C5), as ``build_retinanet_resnet_fpn_backbone``.

The pyramid's inputs are ``MODEL.FPN.IN_FEATURES`` in both cases; the flavour only sets
the default top block and ``MAX_LEVEL``.
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone, build_resnet_backbone
from torch import nn

from ..layers import FUSION_METHODS, NORMS, LayerStyle
from ..layers.checks import OptionError, check_choice, check_positive, naming_keys
from .bifpn import BiFPN, CellOptions
from .efficientnet import FEATURE_NAMES, EfficientNetBackbone
from .fpn import WeightedFPN
from .pyramid_graph import pyramid_levels
from .top_blocks import TOP_BLOCKS, make_top_block

__all__ = [
    "BIFPN_SWITCH",
    "bifpn_switch",
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

@dataclass(frozen=True)
class Flavour:
    """A pyramid flavour: levels added above the last input, and the top blocks of the FPN
    and of the BiFPN when their TOP_BLOCK key is empty."""

    num_extra_levels: int
    fpn_top_block: str
    bifpn_top_block: str


# The BiFPN's top blocks were chosen on the neck study's dev splits (docs/study.md): for
# RetinaNet the FPN's P6/P7 from C5 joined after the cells; for R-CNN (P6 for the RPN only)
# a strided conv from the cells' P5 (P6 from C5 after the cells was behind it on dev).
FLAVOURS = {"rcnn": Flavour(1, "maxpool", "p6p7_p5"), "retinanet": Flavour(2, "p6p7_c5", "p6p7_c5_after")}
# MODEL.BIFPN.TOP_BLOCK: EfficientDet's max-pool levels or RetinaNet's strided convs from C5
# (before the cells, which fuse their levels), or, after the cells from their last output,
# Faster R-CNN's max-pooled P6 or FCOS's strided convs, or RetinaNet's convs from C5 joined
# after the cells (the FPN's coarse levels exactly); with the most levels each can make
# (EfficientDet's: as many as P2-P8 leave, 6).
BIFPN_TOP_BLOCK_LEVELS = {"efficientdet": 6, "p6p7_c5": 2, "maxpool": 1, "p6p7_p5": 2, "p6p7_c5_after": 2}
BIFPN_TOP_BLOCKS = tuple(BIFPN_TOP_BLOCK_LEVELS)
# BiFPN top blocks that read a bottom-up map and still join after the cells: the block built.
_JOINED_AFTER_CELLS = {"p6p7_c5_after": "p6p7_c5"}


def default_bifpn_top_block(num_levels: int) -> str:
    """The BiFPN top block an empty ``MODEL.BIFPN.TOP_BLOCK`` means for a pyramid with
    ``num_levels`` levels above its last input: the flavour's (2: RetinaNet's, else R-CNN's)."""
    return FLAVOURS["retinanet" if num_levels >= 2 else "rcnn"].bifpn_top_block


def make_bifpn_top_block(name: str, bottom_up: Backbone, in_features: Sequence[str], out_channels: int,
                         num_levels: int, style: LayerStyle) -> Tuple[nn.Module, Optional[bool]]:
    """The BiFPN top block ``name`` (one of :data:`BIFPN_TOP_BLOCKS`) adding ``num_levels``
    levels, and the ``top_after_cells`` argument of :class:`BiFPN` that places it: True for
    the blocks that read a bottom-up map and join after the cells (``p6p7_c5_after``), None
    (placed by what it reads) for the others."""
    check_choice("top_block", name, BIFPN_TOP_BLOCKS)
    block = make_top_block(_JOINED_AFTER_CELLS.get(name, name), bottom_up, in_features, out_channels,
                           num_levels, style)
    return block, (True if name in _JOINED_AFTER_CELLS else None)

# Where each BiFPN argument comes from: CellOptions / LayerStyle field -> config key. The
# builder reads the keys through these tables, and names the key when a constructor
# refuses a value (an OptionError naming the field).
CELL_KEYS = {
    "graph": "MODEL.BIFPN.GRAPH",
    "fusion": "MODEL.BIFPN.FUSE_TYPE",
    "fusion_eps": "MODEL.FPN.FUSION_EPS",
    "fusion_input_weight": "MODEL.BIFPN.FUSION_INPUT_WEIGHT",
    "activation": "MODEL.BIFPN.ACTIVATION",
    "separable_conv": "MODEL.BIFPN.SEPARABLE_CONV",
    "dense_levels": "MODEL.BIFPN.DENSE_CONV_LEVELS",
    "residual": "MODEL.BIFPN.RESIDUAL",
    "residual_scale": "MODEL.BIFPN.RESIDUAL_SCALE",
    "conv_init": "MODEL.BIFPN.CONV_INIT",
    "channels_last": "MODEL.BIFPN.CHANNELS_LAST",
}
STYLE_KEYS = {
    "norm": "MODEL.BIFPN.NORM",
    "norm_eps": "MODEL.BIFPN.NORM_EPS",
    "norm_momentum": "MODEL.BIFPN.NORM_MOMENTUM",
    "same_padding": "MODEL.BIFPN.SAME_PADDING",
    "bias_before_norm": "MODEL.BIFPN.BIAS_BEFORE_NORM",
}
_BIFPN_KEYS = {**CELL_KEYS, **STYLE_KEYS, "num_cells": "MODEL.BIFPN.NUM_CELLS"}
_EFFICIENTNET_KEYS = {"model_name": "MODEL.EFFICIENTNET.NAME", "norm": "MODEL.EFFICIENTNET.NORM",
                      "freeze_at": "MODEL.BACKBONE.FREEZE_AT"}


def _read(cfg, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _as_tuple(value: Any) -> Any:
    """A config list as the tuple a frozen options dataclass holds; other values as they are."""
    return tuple(value) if isinstance(value, list) else value


@BACKBONE_REGISTRY.register()
def build_efficientnet_backbone(cfg, input_shape: ShapeSpec) -> EfficientNetBackbone:
    """timm EfficientNet alone (outputs ``c1``..``c5``); reads ``MODEL.EFFICIENTNET.*``
    and ``MODEL.BACKBONE.FREEZE_AT``."""
    return _efficientnet(cfg, input_shape, None)


def _efficientnet(cfg, input_shape: ShapeSpec, out_features: Optional[List[str]]) -> EfficientNetBackbone:
    ec = cfg.MODEL.EFFICIENTNET
    if input_shape.channels != 3:
        raise ValueError(f"EfficientNet takes 3-channel images, got {input_shape.channels} "
                         "(MODEL.PIXEL_MEAN)")
    if out_features is not None and not set(out_features) <= set(FEATURE_NAMES):
        out_features = None  # let the pyramid report what the bottom-up network produces
    try:
        with naming_keys(_EFFICIENTNET_KEYS):
            bottom_up = EfficientNetBackbone(ec.NAME, out_features, cfg.MODEL.BACKBONE.FREEZE_AT, ec.NORM,
                                             ec.DROP_PATH_RATE, ec.WEIGHTS)
        bottom_up.set_grad_checkpointing(ec.CHECKPOINT_ACTIVATIONS)
        return bottom_up
    except OptionError:
        raise
    except (OSError, ValueError) as e:
        if not ec.WEIGHTS:
            raise
        raise ValueError(f"MODEL.EFFICIENTNET.WEIGHTS={ec.WEIGHTS!r}: {e}") from e


def _bottom_up(cfg, input_shape: ShapeSpec, kind: str) -> Backbone:
    """ResNet (Detectron2's builder), or EfficientNet built up to MODEL.FPN.IN_FEATURES."""
    if kind == "resnet":
        return build_resnet_backbone(cfg, input_shape)
    return _efficientnet(cfg, input_shape, list(cfg.MODEL.FPN.IN_FEATURES))


def _input_levels(cfg, bottom_up: Backbone, kind: str) -> list:
    try:
        return pyramid_levels(bottom_up, cfg.MODEL.FPN.IN_FEATURES)
    except ValueError as e:
        hint = " (for ResNet, MODEL.RESNETS.OUT_FEATURES lists what it produces)" if kind == "resnet" else ""
        raise ValueError(f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)}: {e}{hint}") from None


def _size_divisibility(cfg) -> Optional[int]:
    """MODEL.FPN.SIZE_DIVISIBILITY: -1 -> None (the last input stride), else the value."""
    value = cfg.MODEL.FPN.SIZE_DIVISIBILITY
    if not isinstance(value, int) or value < -1:
        raise ValueError(f"MODEL.FPN.SIZE_DIVISIBILITY={value!r} is not valid; it must be -1 (the stride of "
                         "the last input level, as Detectron2's FPN), 0 (no padding) or a positive integer")
    return None if value == -1 else value


# Keys of earlier versions: setting one is an error that names its replacement.
RENAMED_KEYS = {"FUSION": "MODEL.BIFPN.FUSE_TYPE", "FUSION_EPS": "MODEL.FPN.FUSION_EPS"}


def _check_renamed_keys(cfg) -> None:
    """Refuse ``MODEL.BIFPN.FUSION`` / ``FUSION_EPS`` (set away from their unset values)."""
    bc = cfg.MODEL.BIFPN
    for key, new_key in RENAMED_KEYS.items():
        if bc.get(key) not in ("", -1.0, None):
            raise ValueError(f"MODEL.BIFPN.{key} was renamed {new_key}; set {new_key} {bc.get(key)!r} "
                             "instead")


def _default_max_level(cfg, levels: List[int], flavour: str) -> int:
    """The coarsest BiFPN level when MODEL.BIFPN.MAX_LEVEL is 0: the flavour's (P6 R-CNN, P7
    RetinaNet), except under Detectron2's SemanticSegmentor, whose only head reads
    MODEL.SEM_SEG_HEAD.IN_FEATURES: a level above those would leave the last cell's node
    for it without a gradient (an unused parameter under DDP)."""
    default = levels[-1] + FLAVOURS[flavour].num_extra_levels
    if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
        return default
    read = [int(name[1:]) for name in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES if re.fullmatch(r"p\d+", name)]
    if len(read) != len(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES):
        return default  # not our level names: the head's own check reports them
    return max([levels[-1], levels[0] + 2] + read)


def bifpn_options(cfg) -> Dict[str, Any]:
    """The :class:`BiFPN` arguments that ``MODEL.BIFPN`` (and ``MODEL.FPN.FUSION_EPS``) set:
    ``num_cells``, ``cell`` (:class:`CellOptions`) and ``style`` (:class:`LayerStyle`). The
    LazyConfig helpers take their defaults from here too."""
    _check_renamed_keys(cfg)
    with naming_keys(_BIFPN_KEYS):
        return dict(
            num_cells=cfg.MODEL.BIFPN.NUM_CELLS,
            cell=CellOptions(**{field: _as_tuple(_read(cfg, key)) for field, key in CELL_KEYS.items()}),
            style=LayerStyle(**{field: _read(cfg, key) for field, key in STYLE_KEYS.items()}),
        )


def _build_bifpn(cfg, input_shape: ShapeSpec, kind: str, flavour: str) -> BiFPN:
    bc = cfg.MODEL.BIFPN
    if not isinstance(bc.OUT_CHANNELS, int) or bc.OUT_CHANNELS < 0:
        raise ValueError(f"MODEL.BIFPN.OUT_CHANNELS={bc.OUT_CHANNELS!r} is not valid; it must be an integer "
                         ">= 1, or 0 for MODEL.FPN.OUT_CHANNELS")
    if bc.OUT_CHANNELS == 0:  # the width Detectron2's heads are sized for
        check_positive("MODEL.FPN.OUT_CHANNELS", cfg.MODEL.FPN.OUT_CHANNELS)
    width = bc.OUT_CHANNELS or cfg.MODEL.FPN.OUT_CHANNELS
    options = bifpn_options(cfg)
    check_choice("MODEL.BIFPN.TOP_BLOCK", bc.TOP_BLOCK, ("",) + BIFPN_TOP_BLOCKS)
    top_name = bc.TOP_BLOCK or FLAVOURS[flavour].bifpn_top_block
    size_divisibility = _size_divisibility(cfg)
    bottom_up = _bottom_up(cfg, input_shape, kind)
    levels = _input_levels(cfg, bottom_up, kind)
    if levels[0] < 2:
        raise ValueError(f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)} start at P{levels[0]}; "
                         "BiFPN levels lie within P2-P8")
    default_max = _default_max_level(cfg, levels, flavour)
    max_level = bc.MAX_LEVEL or default_max
    allowed = list(range(max(levels[-1], levels[0] + 2), 9))
    if max_level not in allowed:
        raise ValueError(
            f"MODEL.BIFPN.MAX_LEVEL={bc.MAX_LEVEL} gives P{levels[0]}-P{max_level} over "
            f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)}; a BiFPN needs at least 3 levels "
            f"within P2-P8: allowed values: {[0] + allowed} (0 = P{default_max})"
        )
    num_extra = max_level - levels[-1]
    most = BIFPN_TOP_BLOCK_LEVELS[top_name]
    if num_extra > most:
        raise ValueError(f"MODEL.BIFPN.TOP_BLOCK={top_name!r} makes at most {most} level(s) above the "
                         f"last input, MODEL.BIFPN.MAX_LEVEL={max_level} needs {num_extra}; "
                         "use 'efficientdet' for more")
    top_block, after_cells = None, None
    if num_extra > 0:
        top_block, after_cells = make_bifpn_top_block(top_name, bottom_up, cfg.MODEL.FPN.IN_FEATURES, width,
                                                      num_extra, options["style"])
    with naming_keys(_BIFPN_KEYS):
        neck = BiFPN(bottom_up, cfg.MODEL.FPN.IN_FEATURES, width, top_block=top_block,
                     size_divisibility=size_divisibility, top_after_cells=after_cells, **options)
    neck.set_grad_checkpointing(bc.CHECKPOINT_ACTIVATIONS)
    return neck


def _build_fpn(cfg, input_shape: ShapeSpec, kind: str, flavour: str) -> WeightedFPN:
    fc = cfg.MODEL.FPN
    check_positive("MODEL.FPN.OUT_CHANNELS", fc.OUT_CHANNELS)
    check_choice("MODEL.FPN.FUSE_TYPE", fc.FUSE_TYPE, FUSION_METHODS)
    size_divisibility = _size_divisibility(cfg)
    top_name = fc.TOP_BLOCK or FLAVOURS[flavour].fpn_top_block
    check_choice("MODEL.FPN.TOP_BLOCK", top_name, TOP_BLOCKS + ("",))
    check_choice("MODEL.FPN.NORM", fc.NORM, NORMS)  # the names of Detectron2's get_norm
    bottom_up = _bottom_up(cfg, input_shape, kind)
    _input_levels(cfg, bottom_up, kind)  # MODEL.FPN.IN_FEATURES named in the error, if wrong
    # Detectron2's P6/P7 are two levels whatever the flavour; EfficientDet's fill the flavour.
    num_levels = FLAVOURS[flavour].num_extra_levels if top_name == "efficientdet" else 2
    top_block = make_top_block(top_name, bottom_up, fc.IN_FEATURES, fc.OUT_CHANNELS, num_levels,
                               LayerStyle(fc.NORM))
    _check_renamed_keys(cfg)
    return WeightedFPN(bottom_up, fc.IN_FEATURES, fc.OUT_CHANNELS, fc.NORM, top_block, fc.FUSE_TYPE,
                       fc.FUSION_EPS, size_divisibility)


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


# MODEL.BACKBONE.NAME of an FPN (Detectron2's or ours) -> the BiFPN builder of the same
# bottom-up network and flavour: what "switching to the BiFPN" changes in a YAML config.
BIFPN_SWITCH = {
    "build_resnet_fpn_backbone": "build_resnet_bifpn_backbone",
    "build_retinanet_resnet_fpn_backbone": "build_retinanet_resnet_bifpn_backbone",
    "build_resnet_weighted_fpn_backbone": "build_resnet_bifpn_backbone",
    "build_retinanet_resnet_weighted_fpn_backbone": "build_retinanet_resnet_bifpn_backbone",
    "build_efficientnet_weighted_fpn_backbone": "build_efficientnet_bifpn_backbone",
    "build_retinanet_efficientnet_weighted_fpn_backbone": "build_retinanet_efficientnet_bifpn_backbone",
}


def bifpn_switch(backbone_name: str) -> str:
    """The BiFPN builder that replaces the FPN builder ``backbone_name``.

    Raises:
        ValueError: ``backbone_name`` is not an FPN builder (the message lists them).
    """
    if backbone_name not in BIFPN_SWITCH:
        raise ValueError(f"MODEL.BACKBONE.NAME={backbone_name!r} is not an FPN to switch; FPN backbones: "
                         f"{sorted(BIFPN_SWITCH)}")
    return BIFPN_SWITCH[backbone_name]
