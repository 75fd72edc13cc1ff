"""The neck's own learning-rate warmup (``MODEL.BIFPN.WARMUP_ITERS``).

Detectron2 warms every parameter up over ``SOLVER.WARMUP_ITERS`` iterations. With
``MODEL.BIFPN.WARMUP_ITERS`` >= 0, the parameters of the detector's neck (``backbone.*``
outside ``backbone.bottom_up``: lateral convs, cells, top block) warm up over that many
iterations instead, from the same ``SOLVER.WARMUP_FACTOR`` by the same
``SOLVER.WARMUP_METHOD``; every other part of their schedule (base learning rate,
``MODEL.BIFPN.LR_FACTOR``, steps, decay) is unchanged. 0 starts the neck at its full
learning rate while the rest warms up. The default, -1, is the solver's warmup for all.

The optimizer marks each of its parameter groups as the neck's or not
(:func:`tag_neck_groups`); :func:`build_lr_scheduler` gives the neck's groups their own
multiplier (:class:`GroupLRMultiplier`).
"""

from typing import Callable, Dict, List, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as build_solver_lr_scheduler
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["NECK_GROUP", "GroupLRMultiplier", "build_lr_scheduler", "is_neck_parameter", "tag_neck_groups"]

# The key of an optimizer parameter group that says whether it holds the neck's parameters.
NECK_GROUP = "bifpn_neck"


def is_neck_parameter(name: str) -> bool:
    """Whether the detector's parameter ``name`` belongs to its neck (the backbone outside
    its bottom-up network)."""
    return name.startswith("backbone.") and not name.startswith("backbone.bottom_up.")


def tag_neck_groups(groups: Sequence[Dict], model: torch.nn.Module) -> List[Dict]:
    """Split each of Detectron2's parameter groups (``get_default_optimizer_params``) into
    its neck's parameters and the rest, each part tagged ``NECK_GROUP`` True or False; the
    other settings of a group (lr, weight decay) are kept as they are."""
    neck = {id(p) for name, p in model.named_parameters() if is_neck_parameter(name)}
    tagged = []
    for group in groups:
        for in_neck in (True, False):
            params = [p for p in group["params"] if (id(p) in neck) == in_neck]
            if params:
                tagged.append({**group, "params": params, NECK_GROUP: in_neck})
    return tagged


class GroupLRMultiplier(LRScheduler):
    """Detectron2's ``LRMultiplier`` with one multiplier per parameter group: at iteration
    ``t`` group ``i`` learns at its initial learning rate times ``multipliers[i](t /
    max_iter)`` (an fvcore ``ParamScheduler``, or any function of the training's progress
    in [0, 1])."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multipliers: Sequence[Callable[[float], float]],
        max_iter: int,
        last_iter: int = -1,
    ):
        if len(multipliers) != len(optimizer.param_groups):
            groups = len(optimizer.param_groups)
            raise ValueError(f"{len(multipliers)} multipliers for {groups} parameter groups")
        self._multipliers = list(multipliers)
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> Dict:
        # as Detectron2's LRMultiplier: the multipliers come from the config, not the checkpoint
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> List[float]:
        where = self.last_epoch / self._max_iter
        return [base_lr * multiplier(where) for base_lr, multiplier in zip(self.base_lrs, self._multipliers)]


def _multiplier(cfg: CfgNode) -> Callable[[float], float]:
    """The learning-rate multiplier Detectron2 builds from ``cfg.SOLVER``."""
    throwaway = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return build_solver_lr_scheduler(cfg, throwaway)._multiplier


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """Detectron2's scheduler, unless ``MODEL.BIFPN.WARMUP_ITERS`` >= 0 and the optimizer
    has neck groups (:func:`tag_neck_groups`): then those groups warm up over
    ``MODEL.BIFPN.WARMUP_ITERS`` iterations and the rest over ``SOLVER.WARMUP_ITERS``."""
    neck_iters = cfg.MODEL.BIFPN.WARMUP_ITERS if "BIFPN" in cfg.MODEL else -1
    if neck_iters < 0 or not any(group.get(NECK_GROUP) for group in optimizer.param_groups):
        return build_solver_lr_scheduler(cfg, optimizer)
    neck_cfg = cfg.clone()
    neck_cfg.defrost()
    neck_cfg.SOLVER.WARMUP_ITERS = neck_iters
    solver, neck = _multiplier(cfg), _multiplier(neck_cfg)
    multipliers = [neck if group.get(NECK_GROUP) else solver for group in optimizer.param_groups]
    return GroupLRMultiplier(optimizer, multipliers, cfg.SOLVER.MAX_ITER)
