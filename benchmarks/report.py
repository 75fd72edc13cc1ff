"""Writing results: CSV, markdown tables and PNG plots (matplotlib, no display needed).

A result is a list of rows, each a ``dict`` from column name to value. A table's columns
are ``columns`` when given, else every key of the rows in order of first appearance; a
row without a column shows an empty CSV cell or ``-`` in markdown.
"""

import csv
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "format_value",
    "markdown_table",
    "plot_bars",
    "plot_lines",
    "plot_scatter",
    "print_now",
    "save_figure",
    "write_csv",
    "write_text",
]

Row = Dict[str, Any]


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers with ``digits`` significant digits (integers in full), NaN/None as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def _columns(rows: Sequence[Row], columns: Optional[Sequence[str]]) -> List[str]:
    if columns is not None:
        return list(columns)
    names: List[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    return names


def markdown_table(rows: Sequence[Row], columns: Optional[Sequence[str]] = None, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of ``rows`` (missing cells shown as ``-``)."""
    names = _columns(rows, columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(n), digits) for n in names) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: str, columns: Optional[Sequence[str]] = None) -> str:
    """Write ``rows`` to ``path`` as CSV with a header line; returns ``path``."""
    names = _columns(rows, columns)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def print_now(text: str) -> None:
    """Print ``text`` and flush, so that progress shows at once in a piped log."""
    print(text, flush=True)


def write_text(text: str, path: str) -> str:
    """Write ``text`` to ``path`` (folders created); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str, dpi: int = 120) -> str:
    """Write ``fig`` to ``path`` (creating its folder) and release it. Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_bars(
    categories: Sequence[str],
    series: Dict[str, Sequence[float]],
    ylabel: str,
    path: str,
    title: str = "",
    reference_lines: Optional[Dict[str, float]] = None,
) -> str:
    """Grouped bars: one group per category, one bar per series (NaN bars left empty);
    ``reference_lines`` draws labelled horizontal lines (e.g. targets). Returns ``path``."""
    plt = pyplot()
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(categories) + 2) + 2.0, 4.5))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
        ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width, label=name)
    for k, (label, y) in enumerate((reference_lines or {}).items()):
        ax.axhline(y, linestyle="--", linewidth=1, color=f"C{len(series) + k}", label=label)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_lines(
    panels: Sequence[Tuple[str, Dict[str, Tuple[Sequence[Any], Sequence[float]]]]],
    xlabel: str,
    path: str,
    title: str = "",
    x_order: Optional[Sequence[Any]] = None,
) -> str:
    """One panel per ``(ylabel, {series name: (x values, y values)})``, side by side, on a
    categorical x axis in the order ``x_order`` (default: sorted). NaN points are left
    out. Returns ``path``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        order = (
            [str(x) for x in x_order]
            if x_order is not None
            else sorted({str(x) for xs, _ in series.values() for x in xs})
        )
        for name, (xs, ys) in series.items():
            points = [
                (order.index(str(x)), y)
                for x, y in zip(xs, ys)
                if y is not None and not math.isnan(y) and str(x) in order
            ]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_scatter(
    groups: Dict[str, Sequence[Tuple[str, float, float]]],
    xlabel: str,
    ylabel: str,
    path: str,
    title: str = "",
    connect: Sequence[str] = (),
    log_x: bool = False,
) -> str:
    """Labelled points, one marker colour per group ``{group: [(label, x, y), ...]}``;
    groups named in ``connect`` are drawn as a line through their points in x order
    (a model family, as in EfficientDet's Figure 1). Returns ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for group, points in groups.items():
        points = sorted((p for p in points if not (math.isnan(p[1]) or math.isnan(p[2]))), key=lambda p: p[1])
        if not points:
            continue
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        style = "-o" if group in connect else "o"
        ax.plot(xs, ys, style, label=group, markersize=6)
        for label, x, y in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
