"""Model analysis as Detectron2's ``tools/analyze_model.py`` does it, for our configs:
per-module FLOP, activation and parameter tables (fvcore) and the module structure.

FLOPs follow fvcore's convention (one per fused multiply-add, as Detectron2's and
EfficientDet's tables); operators without a formula (element-wise ops, NMS) count as 0, as
in Detectron2. Tables are of the first input; totals are the mean and standard deviation
over all inputs (images of different sizes cost differently).
"""

from collections import Counter
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.export import TracingAdapter
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import ActivationCountAnalysis, flop_count_table, parameter_count_table

from ..data import ensure_generated
from .config import ConfigError

__all__ = ["TASKS", "analysis_inputs", "analyze", "count_report", "parse_size"]

TASKS = ("flop", "activation", "parameter", "structure")


def parse_size(text: str) -> List[int]:
    """``"512"`` -> ``[512, 512]``, ``"800x1333"`` -> ``[800, 1333]`` (height x width)."""
    parts = text.lower().split("x")
    try:
        size = [int(p) for p in parts]
    except ValueError:
        size = []
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size {text!r} is not N or HxW with positive integers")
    return size


def analysis_inputs(
    cfg: CfgNode, num_inputs: int, size: Optional[Sequence[int]] = None
) -> Iterator[List[dict]]:
    """``num_inputs`` batches of one image: from the test loader of ``DATASETS.TEST[0]``
    (test-time resize, as Detectron2), or random ``size = [H, W]`` images when given (for
    datasets that are not on disk).

    Raises:
        ConfigError: no test dataset and no ``size``.
    """
    if size is not None:
        generator = torch.Generator().manual_seed(0)
        for _ in range(num_inputs):
            yield [{"image": (torch.rand(3, *size, generator=generator) * 255).to(cfg.MODEL.DEVICE)}]
        return
    if not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: give an input size to analyse random images")
    ensure_generated(cfg.DATASETS.TEST[0])
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    for _, batch in zip(range(num_inputs), loader):
        yield batch


def count_report(
    model: torch.nn.Module, inputs: Iterable[List[dict]], activations: bool, max_depth: int
) -> str:
    """The per-module table of the first batch of ``inputs`` (parameters, FLOPs, and
    activations if ``activations``; modules nested up to ``max_depth``), then the
    per-operator averages and the total (FLOPs, or activations) over all batches."""
    operators: Counter = Counter()
    totals = []
    table = ""
    for index, batch in enumerate(inputs):
        counter = _activation_analysis(model, batch) if activations else FlopCountAnalysis(model, batch)
        counter.unsupported_ops_warnings(index == 0).uncalled_modules_warnings(index == 0)
        counter.tracer_warnings("none")
        if index == 0:
            flops = counter if not activations else FlopCountAnalysis(model, batch)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            table = flop_count_table(flops, max_depth=max_depth, activations=counter if activations else None)
        operators.update(counter.by_operator())
        totals.append(counter.total())
    if not totals:
        raise ConfigError("no inputs to analyse")
    what, unit = ("activations", "M") if activations else ("GFLOPs", "G")
    scale = 1e6 if activations else 1e9
    per_operator = "\n".join(
        f"  {name}: {count / len(totals) / scale:.3f}{unit}" for name, count in operators.most_common()
    )
    return (
        f"{table}\n\nAverage {what} per operator over {len(totals)} input(s):\n{per_operator}\n"
        f"Total {what}: {np.mean(totals) / scale:.3f}{unit} +- {np.std(totals) / scale:.3f}{unit}\n"
    )


def _activation_analysis(model: torch.nn.Module, batch: List[dict]) -> ActivationCountAnalysis:
    """fvcore's activation count of a Detectron2 model, traced through ``TracingAdapter``
    as Detectron2's ``FlopCountAnalysis`` does (same module names)."""
    wrapper = TracingAdapter(model, batch, allow_non_tensor=True)
    return ActivationCountAnalysis(wrapper, wrapper.flattened_inputs)


def analyze(
    model: torch.nn.Module, task: str, inputs: Optional[Iterable[List[dict]]] = None, max_depth: int = 3
) -> str:
    """The report of one of :data:`TASKS` on ``model`` (eval mode): ``flop`` and
    ``activation`` run ``inputs``; ``parameter`` is fvcore's parameter table
    (``max_depth + 2`` levels, as Detectron2's 5 for the default 3); ``structure`` is
    ``str(model)``."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {list(TASKS)}")
    if task == "parameter":
        return parameter_count_table(model, max_depth=max_depth + 2)
    if task == "structure":
        return str(model)
    with torch.no_grad():
        return count_report(model, inputs or [], task == "activation", max_depth)
