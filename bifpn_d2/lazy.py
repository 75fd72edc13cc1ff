"""Our necks in Detectron2's LazyConfig models, in one line.

Detectron2's LazyConfig model zoo (``common/models/retinanet.py``, ``mask_rcnn_fpn.py``,
``fcos.py``, ``panoptic_fpn.py``, ``keypoint_rcnn_fpn.py``, ``cascade_rcnn.py``, ...) builds
``model.backbone`` as a ``LazyCall`` of Detectron2's ``FPN``. These helpers turn that node
into ours, in place, keeping its bottom-up network, ``in_features`` (interpolations
included) and ``out_channels``, the width the config's heads are sized for::

    from detectron2 import model_zoo
    from bifpn_d2.lazy import use_bifpn, use_weighted_fpn

    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    use_bifpn(model)                                    # or: use_bifpn(model, num_cells=3)
    use_weighted_fpn(model, fuse_type="fast_normalized")  # our FPN instead

Top blocks (the levels above the last input):

- :func:`use_weighted_fpn` keeps Detectron2's ``LastLevelMaxPool`` / ``LastLevelP6P7`` as
  they are (our FPN runs them as Detectron2's does, from ``res5`` or from ``p5`` as FCOS):
  with ``fuse_type="sum"`` the parameter names are Detectron2's and its checkpoints load.
- :func:`use_bifpn` replaces them by the BiFPN's own top block (``top_block_type``, the
  values of ``MODEL.BIFPN.TOP_BLOCK``), making as many levels (P6 for ``LastLevelMaxPool``,
  P6-P7 for ``LastLevelP6P7``). The default, ``""``, follows what the FPN's top block reads,
  as the neck study chose: ``"p6p7_c5_after"`` for P6-P7 from ``res5`` (RetinaNet's: the same
  strided 3x3 convs from the last bottom-up level, joined after the cells), ``"p6p7_p5"``
  for P6-P7 from ``p5`` (FCOS's) and for a max-pooled P6 (R-CNN's: a strided conv from the
  cells' P5). ``"p6p7_p5"`` and ``"maxpool"`` make them after the
  cells from the pyramid's own last level, as Detectron2's FPN does for R-CNN and FCOS;
  ``"p6p7_c5"`` (strided convs from the last bottom-up level) and ``"efficientdet"`` (1x1
  conv + norm + max-pools) make them before the cells, which fuse them.
"""
from dataclasses import asdict
from typing import Any, Sequence

from detectron2.config import LazyCall as L
from detectron2.config import get_cfg
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.utils.registry import locate
from omegaconf import DictConfig

from .config import add_bifpn_config
from .layers import LayerStyle
from .layers.checks import check_choice
from .modeling import BiFPN, CellOptions, ConvP6P7TopBlock, MaxPoolTopBlock, WeightedFPN
from .modeling.bifpn import BIFPN_STYLE, DEFAULT_NUM_CELLS
from .modeling.builders import BIFPN_TOP_BLOCKS, bifpn_options, default_bifpn_top_block, make_bifpn_top_block
from .modeling.pyramid_cell import DEFAULT_CELL

__all__ = ["bifpn_backbone", "use_bifpn", "use_weighted_fpn"]

# Levels a top block adds, by type, where its arguments do not say (``num_levels``).
_TOP_BLOCK_LEVELS = {LastLevelMaxPool: 1, MaxPoolTopBlock: 1, LastLevelP6P7: 2, ConvP6P7TopBlock: 2}
# Arguments of Detectron2's FPN that our necks do not take.
_FPN_ONLY = ("square_pad",)


def bifpn_backbone(
    bottom_up: Backbone,
    in_features: Sequence[str],
    out_channels: int,
    extra_levels: int,
    top_block_type: str = "",
    num_cells: int = DEFAULT_NUM_CELLS,
    cell: CellOptions = DEFAULT_CELL,
    style: LayerStyle = BIFPN_STYLE,
) -> BiFPN:
    """A :class:`BiFPN` over ``in_features`` of ``bottom_up`` with ``extra_levels`` levels
    above the last of them, made as ``MODEL.BIFPN.TOP_BLOCK`` says (``top_block_type``:
    ``""``, the study's choice for ``extra_levels``; ``"p6p7_p5"`` or ``"maxpool"`` from the
    cells' last output; ``"p6p7_c5"``, strided convs from the last input, up to 2 levels,
    fused by the cells, or ``"p6p7_c5_after"``, joined after them; ``"efficientdet"``, 1x1
    conv + max-pools):
    the target :func:`use_bifpn` gives ``model.backbone``, since the last input level is
    known only once the bottom-up network is built. ``num_cells``, ``cell`` and ``style``:
    as :class:`BiFPN`'s."""
    check_choice("top_block_type", top_block_type, ("",) + BIFPN_TOP_BLOCKS)
    top_block, after_cells = None, None
    if extra_levels > 0:
        name = top_block_type or default_bifpn_top_block(extra_levels)
        top_block, after_cells = make_bifpn_top_block(
            name, bottom_up, in_features, out_channels, extra_levels, style)
    return BiFPN(bottom_up, list(in_features), out_channels, num_cells, top_block, cell, style,
                 top_after_cells=after_cells)


def _target(node: DictConfig) -> Any:
    """The callable of a ``LazyCall`` node (a string once a config was saved and reloaded)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return locate(target) if isinstance(target, str) else target


def _pyramid_node(model: DictConfig, helper: str) -> DictConfig:
    """``model.backbone``, checked to be a LazyCall of Detectron2's FPN (or of ours)."""
    backbone = model.get("backbone") if isinstance(model, DictConfig) else None
    target = _target(backbone)
    if target is not FPN and target is not WeightedFPN:
        found = target if backbone is not None else "no model.backbone"
        raise ValueError(f"{helper} replaces a LazyCall of Detectron2's FPN in model.backbone; "
                         f"found {found!r}")
    for key in _FPN_ONLY:
        if backbone.get(key, 0):
            raise ValueError(f"model.backbone.{key}={backbone[key]!r}: our necks pad to a multiple of the "
                             "last input stride, not to a square")
        backbone.pop(key, None)
    return backbone


def _extra_levels(backbone: DictConfig) -> int:
    """How many levels the pyramid's top block adds (0 without one)."""
    top_block = backbone.get("top_block")
    if top_block is None:
        return 0
    if "num_levels" in top_block:
        return top_block.num_levels
    target = _target(top_block)
    if target not in _TOP_BLOCK_LEVELS:
        raise ValueError(f"model.backbone.top_block: {target!r} does not say how many levels it adds; "
                         "give it num_levels, or use LastLevelMaxPool or LastLevelP6P7")
    return _TOP_BLOCK_LEVELS[target]


def _default_top_block(backbone: DictConfig, extra_levels: int) -> str:
    """The BiFPN top block for the FPN's: P6/P7 from a pyramid output (FCOS's, from ``p5``)
    are made from the cells' P5 (``"p6p7_p5"``); otherwise the flavour's default for as many
    levels (RetinaNet's from ``res5``: ``"p6p7_c5_after"``; R-CNN's P6: ``"p6p7_p5"``)."""
    top_block = backbone.get("top_block")
    reads_p5 = (_target(top_block) in (LastLevelP6P7, ConvP6P7TopBlock)
                and str(top_block.get("in_feature", "res5")).startswith("p"))
    return "p6p7_p5" if reads_p5 else default_bifpn_top_block(extra_levels)


def use_bifpn(model: DictConfig, **options: Any) -> DictConfig:
    """Make ``model.backbone`` (a LazyCall of Detectron2's FPN) our BiFPN, in place.

    Keeps ``bottom_up``, ``in_features`` and ``out_channels``; the levels above the last
    input are as many as the FPN's top block made (see the module docstring); the FPN's
    ``norm`` gives way to the BiFPN's. The cell options and the layer style become LazyCall
    nodes of their own, so that overrides read ``model.backbone.cell.fusion=softmax`` or
    ``model.backbone.style.norm=SyncBN``.

    Args:
        model: a LazyConfig model (``cfg.model``) with a ``backbone`` FPN node.
        options: ``num_cells``, ``top_block_type``, or any field of :class:`CellOptions`
            (``fusion``, ``residual``, ...) or of :class:`LayerStyle` (``norm``, ...); the
            others take the defaults of the ``MODEL.BIFPN`` keys (:mod:`bifpn_d2.config`).
    Returns:
        ``model``, changed.
    """
    cfg = add_bifpn_config(get_cfg())
    defaults = bifpn_options(cfg)
    cell, style = asdict(defaults["cell"]), asdict(defaults["style"])
    top = {"num_cells": defaults["num_cells"], "top_block_type": cfg.MODEL.BIFPN.TOP_BLOCK}
    for name, value in options.items():
        target = next((d for d in (top, cell, style) if name in d), None)
        if target is None:
            raise ValueError(f"use_bifpn: unknown option {name!r}; allowed: {sorted([*top, *cell, *style])}")
        target[name] = value
    backbone = _pyramid_node(model, "use_bifpn")
    extra_levels = _extra_levels(backbone)
    if not top["top_block_type"]:  # the study's choice, from what the FPN's top block reads
        top["top_block_type"] = _default_top_block(backbone, extra_levels)
    for key in ("top_block", "fuse_type", "norm"):  # what the BiFPN makes or names otherwise
        backbone.pop(key, None)
    backbone._target_ = bifpn_backbone
    backbone.extra_levels = extra_levels
    backbone.update(top)
    backbone.cell = L(CellOptions)(**cell)
    backbone.style = L(LayerStyle)(**style)
    return model


def use_weighted_fpn(model: DictConfig, fuse_type: str = "fast_normalized", **options: Any) -> DictConfig:
    """Make ``model.backbone`` (a LazyCall of Detectron2's FPN) our :class:`WeightedFPN`, in
    place: the same bottom-up, features, width, norm and top block, with ``fuse_type``
    fusion. ``fuse_type="sum"`` is Detectron2's FPN, parameter for parameter.

    Args:
        model: a LazyConfig model (``cfg.model``) with a ``backbone`` FPN node.
        fuse_type: ``"fast_normalized"``, ``"softmax"``, ``"weighted"``, ``"sum"`` or ``"avg"``.
        options: other :class:`WeightedFPN` arguments (``fusion_eps``, ``size_divisibility``).
    Returns:
        ``model``, changed.
    """
    backbone = _pyramid_node(model, "use_weighted_fpn")
    backbone._target_ = WeightedFPN
    backbone.fuse_type = fuse_type
    backbone.update(options)
    return model
