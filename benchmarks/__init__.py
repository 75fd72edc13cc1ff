"""The lab: what the project measures itself with. Not part of the installed package
(the wheel carries ``bifpn_d2`` only); it imports ``bifpn_d2``, never the other way round.
The scripts in ``tools/`` that use it put the repository root on ``sys.path``; the tests
get it from pytest's ``pythonpath`` setting.

- :mod:`.measure`: interleaved timing, peak memory, FLOPs, parameters;
- :mod:`.models`: configs, subjects (a model or a backbone) and their inputs;
- :mod:`.report`: CSV, markdown tables and plots;
- :mod:`.sweep`: one subject over devices, input sizes and batch sizes;
- :mod:`.race`: our necks against effdet's and Detectron2's, neck alone;
- :mod:`.efficientdet_race`: our EfficientDet against effdet's, whole detector;
- :mod:`.zoo`: our configs next to Detectron2's model zoo and the EfficientDet paper;
- :mod:`.fusion_panels`: the learned fusion weights of a model's necks;
- :mod:`.comparison`, :mod:`.plots`, :mod:`.neck_study`: training several configs side by
  side (the main job, the neck study) and their tables and plots.
"""

from bifpn_d2.engine.analysis import parse_size

from .fusion_panels import (
    Panel,
    cell_nodes,
    collect_panels,
    edge_rows,
    fpn_nodes,
    fusion_weights,
    plot_panels,
)
from .measure import (
    MEMORY_METHODS,
    check_device,
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
    make_inputs,
    subject_config,
    training_step,
)
from .race import (
    CASES,
    EFFDET_MODELS,
    TARGETS,
    Contestants,
    bifpn_contestants,
    contestants,
    fpn_contestants,
    race,
    race_name,
    target_rows,
)
from .report import (
    format_value,
    markdown_table,
    plot_bars,
    plot_lines,
    plot_scatter,
    print_now,
    save_figure,
    write_csv,
    write_text,
)
from .sweep import benchmark_device, measure_subject, plot_sweep
from .zoo import (
    DETECTRON2_ZOO,
    EFFICIENTDET_PAPER,
    ZOO_COLUMNS,
    config_rows,
    default_configs,
    detectron2_rows,
    find_ap,
    last_ap,
    measure_config,
    plot_ap_vs_gflops,
    standard_size,
    time_models,
)

__all__ = [
    "CASES",
    "COMPONENTS",
    "DETECTRON2_ZOO",
    "EFFDET_MODELS",
    "EFFICIENTDET_PAPER",
    "MEMORY_METHODS",
    "TARGETS",
    "ZOO_COLUMNS",
    "Contestants",
    "Panel",
    "PrecomputedFeatures",
    "benchmark_device",
    "bifpn_contestants",
    "build_subject",
    "cell_nodes",
    "collect_panels",
    "config_rows",
    "contestants",
    "count_flops",
    "count_parameters",
    "check_device",
    "default_configs",
    "describe",
    "detectron2_rows",
    "edge_rows",
    "find_ap",
    "format_value",
    "fpn_contestants",
    "fpn_nodes",
    "fusion_weights",
    "interleaved_times",
    "last_ap",
    "make_inputs",
    "markdown_table",
    "measure_config",
    "measure_subject",
    "median",
    "parse_size",
    "peak_memory_bytes",
    "plot_ap_vs_gflops",
    "plot_bars",
    "plot_lines",
    "plot_panels",
    "plot_scatter",
    "plot_sweep",
    "print_now",
    "race",
    "race_name",
    "save_figure",
    "standard_size",
    "subject_config",
    "synchronize",
    "target_rows",
    "time_models",
    "training_step",
    "write_csv",
    "write_text",
]
