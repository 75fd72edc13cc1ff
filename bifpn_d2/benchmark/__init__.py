"""Measurement helpers shared by ``tools/benchmark.py``, ``tools/neck_race.py`` and
``tools/model_zoo_table.py``: interleaved timing, peak memory, FLOPs, inputs, and
writing tables and plots. Not imported by ``import bifpn_d2``."""

from .measure import (
    MEMORY_METHODS,
    count_flops,
    count_parameters,
    interleaved_times,
    median,
    peak_memory_bytes,
    synchronize,
)
from .models import (
    COMPONENTS,
    PrecomputedFeatures,
    build_subject,
    describe,
    load_config,
    make_inputs,
    parse_size,
    training_step,
)
from .report import (
    format_value,
    markdown_table,
    plot_bars,
    plot_lines,
    plot_scatter,
    save_figure,
    write_csv,
    write_text,
)

__all__ = [
    "COMPONENTS",
    "MEMORY_METHODS",
    "PrecomputedFeatures",
    "build_subject",
    "count_flops",
    "count_parameters",
    "describe",
    "format_value",
    "interleaved_times",
    "load_config",
    "make_inputs",
    "markdown_table",
    "median",
    "parse_size",
    "save_figure",
    "peak_memory_bytes",
    "plot_bars",
    "plot_lines",
    "plot_scatter",
    "synchronize",
    "training_step",
    "write_csv",
    "write_text",
]
