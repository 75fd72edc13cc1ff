"""Pictures of trained comparisons (main job, neck study): APs with every seed shown, loss
and AP curves over training, and fusion weights over training. PNG files, no display."""

import math
from typing import Dict, List, Optional, Sequence, Tuple

from .comparison import METRICS, Run
from .report import pyplot, save_figure

__all__ = ["plot_ap_curves", "plot_comparison", "plot_fusion_weights", "plot_pairs"]


def _ap_bars(ax, groups: Dict[str, Sequence[Run]], metrics: Sequence[Tuple[str, str, Optional[str]]]) -> None:
    """Grouped bars of the seeds' mean per metric, one colour per group, seeds as dots;
    ``metrics``: (label, metric key, test dataset or None for a run's first)."""
    width = 0.8 / max(len(groups), 1)
    for i, (label, runs) in enumerate(groups.items()):
        xs = [k + (i - (len(groups) - 1) / 2) * width for k in range(len(metrics))]
        per_seed = [[r.value(key, dataset) for r in runs] for _, key, dataset in metrics]
        means = [sum(v) / len(v) if v else math.nan for v in per_seed]
        bars = ax.bar(xs, [0 if math.isnan(m) else m for m in means], width, label=label, alpha=0.7)
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], fontsize=7, padding=1)
        for x, values in zip(xs, per_seed):
            ax.plot([x] * len(values), values, "k.", markersize=4)
    ax.set_xticks(range(len(metrics)), [name for name, _, _ in metrics], fontsize=7)
    ax.set_ylabel("%: bars = mean, dots = seeds")
    ax.legend()


def plot_comparison(
    groups: Dict[str, Sequence[Run]], path: str, title: str, primary: str = "bbox/AP",
    datasets: Sequence[Optional[str]] = (None,),
) -> str:
    """Left: training loss against iteration, one line per seed; right: the ``primary``
    metric on every test dataset and, for box and mask AP, its size breakdown on the first."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (label, runs) in enumerate(groups.items()):
        for k, run in enumerate(runs):
            left.plot(
                run.iterations,
                run.losses,
                color=f"C{i}",
                alpha=0.8,
                linewidth=1.2,
                linestyle=("-", "--", ":", "-.")[k % 4],
                label=f"{label} seed {run.seed}",
            )
    left.set(xlabel="iteration", ylabel="total training loss", title="Training loss")
    left.set_yscale("log")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    task = primary.split("/")[0]
    bars = [(f"{primary}\n{d or ''}".strip(), primary, d) for d in datasets]
    if task in ("bbox", "segm"):
        bars += [(f"{name}\n{datasets[0] or ''}".strip(), f"{task}/{key.split('/')[1]}", datasets[0])
                 for name, key in METRICS if name not in ("AP", "AP75")]
    _ap_bars(right, groups, bars)
    right.set_title("Evaluation")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_ap_curves(groups: Dict[str, Sequence[Run]], path: str, title: str) -> str:
    """AP against iteration, one line per run (runs evaluated during training)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (label, runs) in enumerate(groups.items()):
        for k, run in enumerate(runs):
            if run.ap_curve:
                xs, ys = zip(*run.ap_curve)
                ax.plot(xs, ys, "-o", color=f"C{i}", markersize=3, alpha=0.8, label=label if k == 0 else None)
    ax.set(xlabel="iteration", ylabel="COCO AP (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_fusion_weights(runs: Dict[str, Run], path: str, title: str, num_nodes: int = 3) -> str:
    """The normalised input weights of ``num_nodes`` nodes of the last cell over training,
    one panel per node, one line style per run (``{fusion method: run}``), as logged by
    :class:`~bifpn_d2.engine.hooks.FusionWeightLogger` (EfficientDet's Figure 6)."""
    plt = pyplot()
    keys = sorted(next(iter(runs.values())).scalars)
    last_cell = max(int(k.split(".cells.")[1].split(".")[0]) for k in keys)
    nodes: List[int] = sorted(
        {int(k.split(".nodes.")[1].split(".")[0]) for k in keys if f".cells.{last_cell}." in k}
    )
    shown = [nodes[round(i * (len(nodes) - 1) / max(num_nodes - 1, 1))] for i in range(num_nodes)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.6 * len(shown), 4), sharey=True, squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, node in zip(axes[0], shown):
        prefix = f"fusion/backbone.cells.{last_cell}.nodes.{node}.fusion/"
        for style, (method, run) in zip(styles, runs.items()):
            for key, values in sorted(run.scalars.items()):
                if key.startswith(prefix):
                    edge = key.rsplit("/", 1)[1]
                    xs, ys = zip(*values)
                    ax.plot(xs, ys, style, color=f"C{edge}", label=f"{method}, input {edge}")
        ax.set(title=f"cell {last_cell}, node {node}", xlabel="iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised input weight")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pairs(rows: Sequence[Dict[str, object]], path: str, title: str, splits: Sequence[str]) -> str:
    """One panel per pair: each arm's primary metric on every evaluation split (bars:
    means over seeds; the split names are the row columns ``splits``)."""
    plt = pyplot()
    pairs = list(dict.fromkeys(str(r["pair"]) for r in rows))
    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, 2.8 * len(pairs)), squeeze=False)
    for ax, pair in zip(axes[:, 0], pairs):
        arms = [r for r in rows if r["pair"] == pair]
        width = 0.8 / len(arms)
        for i, row in enumerate(arms):
            xs = [k + (i - (len(arms) - 1) / 2) * width for k in range(len(splits))]
            ax.bar(xs, [float(row[s]) for s in splits], width, label=str(row["arm"]), color=f"C{i}")
        ax.set_xticks(range(len(splits)), splits)
        ax.set_ylabel(f"{arms[0]['metric']} (%)")
        ax.set_title(pair, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
