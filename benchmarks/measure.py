"""Measuring one model: latency, peak memory, FLOPs and parameters.

Latencies are wall-clock seconds per call. Several implementations are timed
*interleaved* (A B C A B C ...) in one process, so that they share threads, inputs and
whatever else the (possibly noisy, shared) machine does at the time; compare medians.

Peak memory is measured the same way for every implementation on a device:

- CUDA: ``torch.cuda.max_memory_allocated`` during the call, minus what was allocated
  before it;
- CPU: the PyTorch profiler's allocation trace (``profile_memory=True``, read from the
  trace that ``export_chrome_trace`` writes): every tensor allocation and free inside the
  call, in order; the peak of their running sum is the most memory the call held on top
  of what existed before it. Unlike process RSS it does not depend on the allocator's
  caching, and unlike ``tracemalloc`` it sees tensor storage. Scratch buffers that oneDNN
  allocates itself are not counted (for either implementation).
"""

import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "MEMORY_METHODS",
    "count_flops",
    "count_parameters",
    "check_device",
    "device_problem",
    "interleaved_times",
    "median",
    "peak_memory_bytes",
    "synchronize",
]

MEMORY_METHODS = {
    "cpu": "torch.profiler allocation trace: peak of bytes allocated minus freed during the call",
    "cuda": "torch.cuda.max_memory_allocated during the call minus memory allocated before it",
}

# Device types of CPU allocations in the profiler's "[memory]" events.
_CPU_MEMORY = (int(DeviceType.CPU), int(DeviceType.MKLDNN))


def device_problem(device: str) -> Optional[str]:
    """Why ``device`` (e.g. "cpu", "cuda", "cuda:1") cannot be measured on here, in one
    line; ``None`` when it can."""
    try:
        device = torch.device(device)
    except RuntimeError:
        return f"device {device!r} is not a device torch knows; use cpu or cuda"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"device {str(device)!r}: no CUDA GPU is available here; use cpu"
    if device.type not in ("cpu", "cuda"):
        return f"device {str(device)!r}: measured on cpu or cuda only"
    return None


def check_device(parser, device: str) -> None:
    """``parser.error`` (one line, exit status 2) when ``device`` cannot be measured on here
    (:func:`device_problem`)."""
    problem = device_problem(device)
    if problem:
        parser.error(problem)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else float("nan")


def interleaved_times(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: Optional[torch.device] = None,
    on_round: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, List[float]]:
    """Time each function ``repeats`` times, round-robin: every round calls each function
    once, and the order rotates from round to round (A B C, B C A, C A B, ...) so that no
    function always runs first or right after the same neighbour.

    Args:
        fns: name -> function of no arguments (one call = one measurement).
        repeats: measured rounds; each round calls every function once.
        warmup: rounds run first and discarded (allocator, oneDNN kernel caches, cuDNN
            autotuning).
        device: synchronised before and after each call so that asynchronous CUDA work
            is inside the measurement (default: CPU, nothing to wait for).
        on_round: called as ``on_round(done, total)`` after each round (progress).
    Returns:
        name -> ``repeats`` durations in seconds, in measurement order.
    """
    device = device or torch.device("cpu")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
        if on_round is not None:
            on_round(round_index + 1, warmup + repeats)
    return times


def peak_memory_bytes(fn: Callable[[], Any], device: Optional[torch.device] = None) -> int:
    """The most memory ``fn()`` holds at once on ``device`` (default: CPU) beyond what was
    allocated before the call, in bytes (method: :data:`MEMORY_METHODS`)."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda, not {device.type}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    memory = [
        event
        for event in _trace_events(prof)
        if event.get("name") == "[memory]" and event["args"].get("Device Type") in _CPU_MEMORY
    ]
    memory.sort(key=lambda event: event["ts"])  # stable: same-time events keep their order
    current = peak = 0
    for event in memory:
        current += event["args"]["Bytes"]
        peak = max(peak, current)
    return peak


def _trace_events(prof: profile) -> List[Dict[str, Any]]:
    """The events of a finished profile as its Chrome trace lists them: one allocation
    (``Bytes`` > 0) or free (< 0) per ``"[memory]"`` event, ``ts`` in microseconds. The
    profiler's per-op summaries (``events()``, ``key_averages()``) only give each op's net
    allocation, which hides the memory an op frees before it returns."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f)["traceEvents"]


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module`` (each shared tensor counted once)."""
    return sum(p.numel() for p in module.parameters())


def count_flops(model: nn.Module, inputs: Any) -> float:
    """Multiply-adds of one forward pass as fvcore counts them (one "flop" per fused
    multiply-add, the convention of Detectron2's and EfficientDet's tables).

    Args:
        model: a module, run in its current mode without gradients.
        inputs: a tuple of positional arguments, or a Detectron2 meta-architecture's
            list of ``{"image": ...}`` dicts (traced through Detectron2's adapter).
    """
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        from detectron2.utils.analysis import FlopCountAnalysis
    else:
        from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        return float(analysis.total())
