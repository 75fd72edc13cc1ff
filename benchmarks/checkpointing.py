"""Activation checkpointing, measured: time and peak memory of one training step of a
model with its checkpointing keys off and on (``CHECKPOINT_KEYS``), built from the same
config with the same random weights, stepped on the same inputs.

Times are medians in milliseconds of interleaved steps (off and on alternate), memory
is in MiB (method: ``MEMORY_METHODS``).
"""

from typing import Any, Callable, Dict, List, Sequence

import torch
from detectron2.config import CfgNode

from bifpn_d2.engine.analysis import parse_size

from .measure import interleaved_times, median, peak_memory_bytes
from .models import build_subject, make_inputs, training_step
from .report import print_now

__all__ = ["CHECKPOINT_KEYS", "VARIANTS", "checkpointing_rows", "checkpointed_config"]

# Every activation-checkpointing key; a model reads those of the parts it has.
CHECKPOINT_KEYS = (
    "MODEL.EFFICIENTNET.CHECKPOINT_ACTIVATIONS",
    "MODEL.BIFPN.CHECKPOINT_ACTIVATIONS",
    "MODEL.EFFICIENTDET.CHECKPOINT_ACTIVATIONS",
)
VARIANTS = ("off", "on")


def checkpointed_config(cfg: CfgNode, enable: bool) -> CfgNode:
    """A copy of ``cfg`` with every key of :data:`CHECKPOINT_KEYS` set to ``enable``."""
    cfg = cfg.clone()
    cfg.merge_from_list([item for key in CHECKPOINT_KEYS for item in (key, enable)])
    return cfg


def checkpointing_rows(
    cfg: CfgNode,
    name: str,
    sizes: Sequence[str],
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    device: torch.device,
    variants: Sequence[str] = VARIANTS,
    say: Callable[[str], None] = print_now,
) -> List[Dict[str, Any]]:
    """One row per (size, batch): ``train_ms_<variant>`` and ``train_mem_MB_<variant>`` for
    each of ``variants`` (``off``, ``on``), and the ratios ``on / off`` when both ran.

    Args:
        cfg: the model's config (:func:`~benchmarks.models.subject_config`); both variants
            are built from it after the same seed, so they hold the same weights.
        sizes: input sizes, ``"N"`` or ``"HxW"``; ``batch_sizes``: images per step.
        repeats, warmup: measured and discarded rounds of interleaved steps.
        variants: a subset of :data:`VARIANTS` (a step that does not fit in memory
            without checkpointing can be measured with ``on`` alone).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants {list(variants)} must be among {list(VARIANTS)}")
    models = {}
    for variant in variants:
        torch.manual_seed(0)
        models[variant] = build_subject(checkpointed_config(cfg, variant == "on"), "model", device).train()
    rows = []
    for size_text in sizes:
        size = parse_size(size_text)
        for batch in batch_sizes:
            row: Dict[str, Any] = {"name": name, "device": device.type, "threads": torch.get_num_threads(),
                                   "size": f"{size[0]}x{size[1]}", "batch": batch, "runs": repeats}
            say(f"{name} {row['size']} bs{batch}: training steps, checkpointing {' / '.join(variants)} ...")
            inputs = make_inputs("model", batch, size, device)
            steps = {v: (lambda m=m, x=inputs: training_step(m, x)) for v, m in models.items()}
            times = interleaved_times(steps, repeats, warmup, device)
            for variant, model in models.items():
                row[f"train_ms_{variant}"] = 1000 * median(times[variant])
                model.zero_grad(set_to_none=True)  # freed before the measured step, not in it
                row[f"train_mem_MB_{variant}"] = peak_memory_bytes(steps[variant], device) / 2**20
                model.zero_grad(set_to_none=True)
            if len(models) == 2:
                row["time_on_over_off"] = row["train_ms_on"] / row["train_ms_off"]
                row["mem_on_over_off"] = row["train_mem_MB_on"] / row["train_mem_MB_off"]
            rows.append(row)
    return rows
