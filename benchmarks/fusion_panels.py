"""The learned fusion weights of a model's necks: which inputs each fused node uses.

A *panel* is one BiFPN cell, or the top-down path of a :class:`WeightedFPN`:
``(title, [(node label, [(source label, weight), ...]), ...])``. Labels name a level and
a role: ``P4 in`` (the cell's input at P4), ``P5 td`` (the top-down node at P5), ``P4
out`` (the cell's output at P4), ``P4 lateral`` and ``P5 top-down`` (a WeightedFPN's
inputs). Weights are :meth:`WeightedFusion.normalized_weights` (for ``fast_normalized``
and ``softmax`` they sum to about 1 per node) or a :class:`FrozenFusion`'s constants.
"""

import re
from typing import Any, Dict, List, Tuple

from torch import nn

from bifpn_d2 import BiFPN, FrozenChannelFusion, FrozenFusion, PyramidCell, WeightedFPN

from .report import pyplot, save_figure

__all__ = ["Panel", "cell_nodes", "collect_panels", "edge_rows", "fpn_nodes", "fusion_weights", "plot_panels"]

Node = Tuple[str, List[Tuple[str, float]]]
Panel = Tuple[str, List[Node]]


def fusion_weights(fusion: nn.Module) -> List[float]:
    """The factor applied to each input of a fusion module (learnable or frozen)."""
    if isinstance(fusion, FrozenFusion):
        return list(fusion.weights)
    if isinstance(fusion, FrozenChannelFusion):
        return fusion.weight.mean(dim=(1, 2, 3, 4)).tolist()
    return fusion.input_weights().detach().cpu().tolist()


def cell_nodes(cell: PyramidCell, min_level: int) -> List[Node]:
    """``(node label, [(source label, weight), ...])`` for every fused node of a cell
    whose first input is at level ``min_level``."""
    num_inputs = len(cell.output_ids)
    outputs = set(cell.output_ids)
    names = [f"P{min_level + i} in" for i in range(num_inputs)]
    result = []
    for index, node in enumerate(cell.nodes):
        node_id = num_inputs + index
        level = min_level + node.level_index
        names.append(f"P{level} {'out' if node_id in outputs else 'td'}")
        sources = [names[i] for i in node.input_ids]
        result.append((names[node_id], list(zip(sources, fusion_weights(node.fusion)))))
    return result


def fpn_nodes(fpn: WeightedFPN) -> List[Node]:
    """The top-down fusions of a :class:`WeightedFPN`, coarsest first: lateral and
    upsampled coarser level."""
    result = []
    for name, fusion in fpn.named_children():
        match = re.fullmatch(r"fpn_fusion(\d+)", name)
        if match:
            level = int(match.group(1))
            sources = [f"P{level} lateral", f"P{level + 1} top-down"]
            result.append((f"P{level}", list(zip(sources, fusion_weights(fusion)))))
    return sorted(result, key=lambda node: -int(node[0][1:]))


def collect_panels(model: nn.Module) -> List[Panel]:
    """A panel per BiFPN cell (and one per weighted FPN) found in ``model``."""
    panels: List[Panel] = []
    for name, module in model.named_modules():
        if isinstance(module, BiFPN):
            for c, cell in enumerate(module.cells):
                panels.append((f"{name or 'model'}: cell {c}", cell_nodes(cell, module.min_level)))
        elif isinstance(module, WeightedFPN):
            panels.append((f"{name or 'model'}: FPN top-down ({module.fuse_type})", fpn_nodes(module)))
    if not panels:
        raise ValueError("the model holds no BiFPN or WeightedFPN neck: nothing to plot")
    return panels


def edge_rows(panels: List[Panel]) -> List[Dict[str, Any]]:
    """One row per input edge: ``panel``, ``node``, ``input`` (its index), ``source`` and
    ``weight``."""
    return [
        {"panel": panel, "node": node, "input": k, "source": src, "weight": weight}
        for panel, nodes in panels
        for node, edges in nodes
        for k, (src, weight) in enumerate(edges)
    ]


def plot_panels(panels: List[Panel], path: str, title: str) -> str:
    """One row per panel: grouped bars, one group per node, one bar per input edge,
    coloured by the kind of its source. Returns ``path``."""
    plt = pyplot()
    import matplotlib.patches

    width = max(sum(len(edges) + 1 for _, edges in nodes) for _, nodes in panels)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(8.0, 0.45 * width), 2.9 * len(panels) + 0.5), squeeze=False
    )
    colours: Dict[str, str] = {}
    for ax, (panel_title, nodes) in zip(axes[:, 0], panels):
        x, ticks, labels = 0.0, [], []
        for k, (node, edges) in enumerate(nodes):
            xs = [x + i for i in range(len(edges))]
            kinds = [source.split()[-1] for source, _ in edges]  # in / td / out / lateral / top-down
            for kind in kinds:
                colours.setdefault(kind, f"C{len(colours)}")
            ax.bar(xs, [w for _, w in edges], 0.8, color=[colours[kind] for kind in kinds])
            for xi, (_, weight) in zip(xs, edges):
                ax.text(xi, weight, f"{weight:.2f}", ha="center", va="bottom", fontsize=7)
            ax.text(
                sum(xs) / len(xs),
                1.0,
                node,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                fontweight="bold",
            )
            ticks += xs
            labels += [source for source, _ in edges]
            if k < len(nodes) - 1:
                ax.axvline(x + len(edges) - 0.1, color="0.85", linewidth=0.8)
            x += len(edges) + 0.8
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("weight")
        ax.set_ylim(0, max(1.0, max(w for _, edges in nodes for _, w in edges)) * 1.15)
        ax.set_title(panel_title, fontsize=9, loc="left", pad=14)
    handles = [
        matplotlib.patches.Patch(color=c, label=f"from a '{kind}' node") for kind, c in colours.items()
    ]
    fig.legend(handles=handles, fontsize=7, loc="upper right", ncol=len(handles))
    fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return save_figure(fig, path, dpi=110)
