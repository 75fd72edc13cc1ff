"""A benchmark sweep of one subject (a model or a backbone, see :mod:`.models`): one row
per (device, input size, batch size) with parameters, GFLOPs, inference latency of the
subject and of its ``fold_for_inference`` copy, training-step time and peak memories.

Times are medians in milliseconds, memory is in MiB (method: ``MEMORY_METHODS``).
"""

from typing import Any, Callable, Dict, List, Sequence

import torch
from detectron2.config import CfgNode

from bifpn_d2 import fold_for_inference
from bifpn_d2.engine.analysis import parse_size

from .measure import count_flops, count_parameters, interleaved_times, median, peak_memory_bytes
from .models import build_subject, make_inputs, training_step
from .report import plot_lines, print_now

__all__ = ["benchmark_device", "measure_subject", "plot_sweep"]


def measure_subject(
    subject: torch.nn.Module,
    folded: torch.nn.Module,
    inputs: Any,
    device: torch.device,
    repeats: int,
    warmup: int,
    train: bool = True,
    memory: bool = True,
    say: Callable[[str], None] = print_now,
) -> Dict[str, Any]:
    """Latencies, training-step time and peak memories of ``subject`` on ``inputs``.

    Args:
        folded: ``fold_for_inference(subject)``, timed interleaved with ``subject``.
        inputs: what :func:`make_inputs` returns for the subject's component.
        repeats, warmup: measured and discarded rounds of :func:`interleaved_times`.
        train: also time one training step; a step that fails (e.g. training-mode batch
            norm over a 1x1 map of one image) is reported in ``note`` and with ``say``.
        memory: also measure the peak memory of one inference (and training step).
    """
    row: Dict[str, Any] = {}

    def infer(module: torch.nn.Module) -> None:
        with torch.no_grad():
            module(inputs)

    subject.eval()
    times = interleaved_times(
        {"subject": lambda: infer(subject), "folded": lambda: infer(folded)}, repeats, warmup, device
    )
    row["infer_ms"] = 1000 * median(times["subject"])
    row["folded_infer_ms"] = 1000 * median(times["folded"])
    if memory:
        row["infer_mem_MB"] = peak_memory_bytes(lambda: infer(subject), device) / 2**20
    if not train:
        return row
    subject.train()
    try:
        step = interleaved_times({"train": lambda: training_step(subject, inputs)}, repeats, warmup, device)
        row["train_ms"] = 1000 * median(step["train"])
        if memory:
            subject.zero_grad(set_to_none=True)  # freed before the measured step, not in it
            row["train_mem_MB"] = peak_memory_bytes(lambda: training_step(subject, inputs), device) / 2**20
    except Exception as e:  # e.g. batch norm over a 1x1 map of one image, targets it lacks
        row["note"] = f"training step failed: {str(e).splitlines()[0]}"
        say(row["note"])
    subject.eval()
    return row


def benchmark_device(
    cfg: CfgNode,
    component: str,
    device: torch.device,
    name: str,
    sizes: Sequence[str],
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    train: bool = True,
    memory: bool = True,
    flops: bool = True,
    say: Callable[[str], None] = print_now,
) -> List[Dict[str, Any]]:
    """Every (size, batch) row for one device.

    Args:
        cfg: the subject's config (:func:`subject_config`); ``component``: ``"model"`` or
            ``"backbone"``; ``name``: the rows' ``name`` column.
        sizes: input sizes, ``"N"`` or ``"HxW"``; ``batch_sizes``: images per call.
        flops: count the GFLOPs of one image at each size (fvcore, multiply-adds).
        repeats, warmup, train, memory, say: as in :func:`measure_subject`.
    """
    subject = build_subject(cfg, component, device).eval()
    params = count_parameters(subject) / 1e6
    folded = fold_for_inference(subject)
    rows = []
    for size_text in sizes:
        size = parse_size(size_text)
        gflops = float("nan")
        if flops:
            one = make_inputs(component, 1, size, device)
            gflops = count_flops(subject, one if component == "model" else (one,)) / 1e9
        for batch in batch_sizes:
            row: Dict[str, Any] = {
                "name": name,
                "device": device.type,
                "threads": torch.get_num_threads(),
                "size": f"{size[0]}x{size[1]}",
                "batch": batch,
                "params_M": params,
                "gflops": gflops,
                "runs": repeats,
            }
            say(f"{name} {device.type} {row['size']} bs{batch} ...")
            inputs = make_inputs(component, batch, size, device)
            row.update(measure_subject(subject, folded, inputs, device, repeats, warmup, train, memory, say))
            row["infer_ms_per_image"] = row["infer_ms"] / batch
            rows.append(row)
    return rows


def plot_sweep(rows: List[Dict[str, Any]], path: str, title: str, sizes: Sequence[str]) -> str:
    """Latency, training-step time and training memory against input size (``sizes``,
    ``"HxW"``, in axis order), one line per (device, batch size) and one per folded
    inference. Returns ``path``."""
    panels = []
    for ylabel, keys in (
        ("inference ms", ("infer_ms", "folded_infer_ms")),
        ("training step ms", ("train_ms",)),
        ("peak training memory MiB", ("train_mem_MB",)),
    ):
        series = {}
        for key in keys:
            for device, batch in dict.fromkeys((r["device"], r["batch"]) for r in rows):
                sel = [r for r in rows if r["device"] == device and r["batch"] == batch and key in r]
                if sel:
                    label = f"{device} bs{batch}" + (" folded" if key.startswith("folded") else "")
                    series[label] = ([r["size"] for r in sel], [r[key] for r in sel])
        panels.append((ylabel, series))
    return plot_lines(panels, "input size (HxW)", path, title, x_order=sizes)
