#!/usr/bin/env python
"""Plot the normalised fusion weights of every BiFPN node: which inputs each node uses.

Builds the model of ``--config-file`` (plus ``KEY VALUE`` overrides), loads ``--weights``
(a checkpoint written by training; without it the freshly built model is shown, whose
weights are all equal) and draws one panel per BiFPN cell: for each fused node a group of
bars, one per input edge, labelled by the source (``P4 in``: the cell's input at P4,
``P5 td``: the top-down node at P5, ``P4 out``: the cell's output at P4). Bar heights are
:meth:`WeightedFusion.normalized_weights` (for ``fast_normalized`` and ``softmax`` they
sum to about 1 per node). A :class:`WeightedFPN` with learnable fusion gets one panel for
its top-down path.

Writes ``fusion_weights.png`` and ``fusion_weights.csv`` (one row per edge) to
``--output-dir``.

Example::

    python tools/plot_fusion_weights.py --config-file configs/EfficientDet/EfficientDet-D0.yaml \\
        --weights output/d0/model_final.pth
"""

import argparse
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from torch import nn

from bifpn_d2 import BiFPN, FrozenFusion, PyramidCell, WeightedFPN
from bifpn_d2.benchmark import load_config, save_figure, write_csv

# One panel: (title, [(node label, [(source label, weight), ...]), ...]).
Panel = Tuple[str, List[Tuple[str, List[Tuple[str, float]]]]]


def fusion_weights(fusion: nn.Module) -> List[float]:
    """The factor applied to each input of a fusion module (learnable or frozen)."""
    if isinstance(fusion, FrozenFusion):
        return list(fusion.weights)
    return fusion.normalized_weights().detach().cpu().tolist()


def cell_nodes(cell: PyramidCell, min_level: int) -> List[Tuple[str, List[Tuple[str, float]]]]:
    """``(node label, [(source label, weight), ...])`` for every fused node of a cell."""
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


def fpn_nodes(fpn: WeightedFPN) -> List[Tuple[str, List[Tuple[str, float]]]]:
    """The top-down fusions of a :class:`WeightedFPN`: lateral and upsampled coarser level."""
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


def plot(panels: List[Panel], path: str, title: str) -> str:
    """One row per panel: grouped bars, one group per node, one bar per input edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default="", help="checkpoint to load (default: the freshly built model)")
    parser.add_argument("--output-dir", default="output/fusion_weights")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Plot the fusion weights of the model on the command line; returns the CSV rows."""
    args = parse_args(argv)
    cfg = load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    if args.weights:
        DetectionCheckpointer(model).load(args.weights)
        source = args.weights
    else:
        source = "freshly built, untrained (all weights equal)"
    with torch.no_grad():
        panels = collect_panels(model)
    rows = [
        {"panel": panel, "node": node, "input": k, "source": src, "weight": weight}
        for panel, nodes in panels
        for node, edges in nodes
        for k, (src, weight) in enumerate(edges)
    ]
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    png = plot(
        panels,
        os.path.join(args.output_dir, "fusion_weights.png"),
        f"Normalised fusion weights: {name}\n{source}",
    )
    write_csv(rows, os.path.join(args.output_dir, "fusion_weights.csv"))
    print(f"wrote {png} and fusion_weights.csv ({len(rows)} edges)")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
