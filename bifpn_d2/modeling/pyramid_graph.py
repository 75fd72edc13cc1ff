"""Pyramid cells as data: which nodes exist, at which level, fed by which earlier nodes.

A cell over levels ``min_level..max_level`` (``L`` levels) starts with ``L`` input nodes,
ids ``0..L-1`` (id ``i`` is level ``min_level + i``). Every :class:`PyramidNode` of the
spec appends one node, whose id is ``L`` + its index in the spec. A node fuses its inputs
(after resampling them to its level), then applies activation, 3x3 conv and norm.
The cell's output at each level is the last node of that level.

For P3-P7 (ids 0..4) the BiFPN spec is the one of EfficientDet::

    top-down:  P6'(3, 4)  P5'(2, 5)  P4'(1, 6)  P3''(0, 7)
    bottom-up: P4''(1, 7, 8)  P5''(2, 6, 9)  P6''(3, 5, 10)  P7''(4, 11)

Any contiguous range of at least two levels works (QuFPN: three); the specs are
generated, not listed. ``GRAPHS`` names them: ``bifpn``, ``panet``, ``qufpn``.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..layers.checks import check_choice

__all__ = [
    "GRAPHS",
    "PyramidNode",
    "bifpn_nodes",
    "build_graph",
    "output_node_ids",
    "panet_nodes",
    "qufpn_nodes",
    "pyramid_levels",
]


@dataclass(frozen=True)
class PyramidNode:
    """One fused node: its pyramid ``level`` (stride ``2**level``) and input node ids."""

    level: int
    inputs: Tuple[int, ...]


def _top_down(min_level: int, max_level: int) -> Tuple[List[PyramidNode], Dict[int, int]]:
    """Top-down path: each level below the top fuses its input with the level above."""
    last = {level: level - min_level for level in range(min_level, max_level + 1)}
    nodes = []
    num_inputs = max_level - min_level + 1
    for level in range(max_level - 1, min_level - 1, -1):
        nodes.append(PyramidNode(level, (last[level], last[level + 1])))
        last[level] = num_inputs + len(nodes) - 1
    return nodes, last


def bifpn_nodes(min_level: int, max_level: int) -> List[PyramidNode]:
    """BiFPN (EfficientDet): top-down, then bottom-up with a same-level skip edge from
    each input into every bottom-up node that is not the top-down node itself."""
    nodes, last = _top_down(min_level, max_level)
    num_inputs = max_level - min_level + 1
    for level in range(min_level + 1, max_level + 1):
        skip = (level - min_level,) if last[level] != level - min_level else ()
        nodes.append(PyramidNode(level, skip + (last[level], last[level - 1])))
        last[level] = num_inputs + len(nodes) - 1
    return nodes


def panet_nodes(min_level: int, max_level: int) -> List[PyramidNode]:
    """PANet (Liu et al. 2018): the same top-down path, then a bottom-up path that fuses
    each level's top-down output with the level below; no same-level skip edges."""
    nodes, last = _top_down(min_level, max_level)
    num_inputs = max_level - min_level + 1
    for level in range(min_level + 1, max_level + 1):
        nodes.append(PyramidNode(level, (last[level], last[level - 1])))
        last[level] = num_inputs + len(nodes) - 1
    return nodes


def qufpn_nodes(min_level: int, max_level: int) -> List[PyramidNode]:
    """QuFPN (quad FPN; Chen et al. 2020, as effdet's ``qufpn_config``): four paths and a
    final same-level fusion of two of them, for at least 3 levels:

    1. top-down from the top input (each level: its input + the level above);
    2. bottom-up over the middle levels (each: every node of its level so far + the level
       below), then the top level (its input + the level below);
    3. a second bottom-up path from the bottom input (each level: its input + the level
       below);
    4. a second top-down path from path 3's top (each middle level: its input, its path-3
       node + the level above), then the bottom level (its input + the level above);

    and, at every level, the sum of the path-2 and path-4 nodes, which are the outputs
    (where a path skips a level, the level's last node stands in for it).
    """
    if max_level - min_level < 2:
        raise ValueError(f"QuFPN needs at least 3 levels, got P{min_level}-P{max_level}")
    levels = range(min_level, max_level + 1)
    ids = {level: [level - min_level] for level in levels}  # the nodes of each level, in order
    nodes: List[PyramidNode] = []

    def add(level: int, inputs: Sequence[int]) -> None:
        nodes.append(PyramidNode(level, tuple(inputs)))
        ids[level].append(len(levels) + len(nodes) - 1)

    for level in range(max_level - 1, min_level - 1, -1):  # path 1
        add(level, (ids[level][-1], ids[level + 1][-1]))
    ids[max_level].append(ids[max_level][-1])  # the top level has no path-1 node
    for level in range(min_level + 1, max_level):  # path 2, middle levels
        add(level, ids[level] + [ids[level - 1][-1]])
    add(max_level, (ids[max_level][0], ids[max_level - 1][-1]))  # path 2, top level
    ids[min_level].append(ids[min_level][-1])  # the bottom level has no path-2 node
    for level in range(min_level + 1, max_level + 1):  # path 3
        below = ids[level - 1][-1] if level != min_level + 1 else ids[level - 1][0]
        add(level, (ids[level][0], below))
    ids[min_level].append(ids[min_level][-1])  # ... nor a path-3 node
    for level in range(max_level - 1, min_level, -1):  # path 4, middle levels
        add(level, (ids[level][0], ids[level][-1], ids[level + 1][-1]))
    add(min_level, (ids[min_level][0], ids[min_level + 1][-1]))  # path 4, bottom level
    ids[max_level].append(ids[max_level][-1])  # the top level has no path-4 node
    for level in levels:  # paths 2 + 4
        add(level, (ids[level][2], ids[level][4]))
    return nodes


GRAPHS = {"bifpn": bifpn_nodes, "panet": panet_nodes, "qufpn": qufpn_nodes}


def build_graph(name: str, min_level: int, max_level: int) -> List[PyramidNode]:
    """The node spec called ``name`` (one of :data:`GRAPHS`) over ``min_level..max_level``."""
    check_choice("graph", name, sorted(GRAPHS))
    if max_level - min_level < 1:
        raise ValueError(f"a pyramid cell needs at least 2 levels, got P{min_level}-P{max_level}")
    return GRAPHS[name](min_level, max_level)


def output_node_ids(nodes: List[PyramidNode], min_level: int, max_level: int) -> List[int]:
    """Id of the last node at each level ``min_level..max_level`` (the cell's outputs)."""
    num_inputs = max_level - min_level + 1
    last = list(range(num_inputs))
    for index, node in enumerate(nodes):
        last[node.level - min_level] = num_inputs + index
    return last


def pyramid_levels(bottom_up, in_features: Sequence[str]) -> List[int]:
    """The level (log2 stride) of each of ``in_features`` of ``bottom_up`` (a Detectron2
    ``Backbone``: its ``output_shape()`` is read); checks that they exist and are at
    successive powers of two, lowest first.

    Raises:
        ValueError: naming the missing features, or the strides that do not fit.
    """
    shapes = bottom_up.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if missing or not in_features:
        raise ValueError(
            f"{missing} not produced by the bottom-up network, which produces {list(shapes)}"
            if missing
            else f"no features given; the bottom-up network produces {list(shapes)}"
        )
    strides = [shapes[f].stride for f in in_features]
    levels = [int(round(math.log2(s))) for s in strides]
    if any(2**level != s for level, s in zip(levels, strides)) or any(
        b != a + 1 for a, b in zip(levels, levels[1:])
    ):
        raise ValueError(
            f"strides {strides}: the features must be at successive "
            "powers of two in increasing order (e.g. 8, 16, 32)"
        )
    return levels
