"""The cell specs are the published graphs, for any number of levels."""
import pytest

from bifpn_d2.modeling.pyramid_graph import (
    PyramidNode,
    bifpn_nodes,
    build_graph,
    output_node_ids,
    panet_nodes,
    qufpn_nodes,
)


def test_bifpn_p3_p7_equals_efficientdet():
    expected = [(6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
                (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11))]
    assert bifpn_nodes(3, 7) == [PyramidNode(level, inputs) for level, inputs in expected]
    assert output_node_ids(bifpn_nodes(3, 7), 3, 7) == [8, 9, 10, 11, 12]


def test_panet_has_no_same_level_skips():
    nodes = panet_nodes(3, 7)
    assert len(nodes) == 8
    for node in nodes:
        assert not any(i < 5 and i == node.level - 3 for i in node.inputs[1:]), node


@pytest.mark.parametrize("min_level, max_level", [(3, 5), (2, 6), (3, 7), (3, 8)])
def test_qufpn_equals_effdets(min_level, max_level):
    """Node for node (level and input ids) effdet's qufpn_config, at several level ranges."""
    fpn_config = pytest.importorskip("effdet.config.fpn_config")
    expected = [PyramidNode(n["feat_level"], tuple(n["inputs_offsets"]))
                for n in fpn_config.qufpn_config(min_level, max_level).nodes]
    assert qufpn_nodes(min_level, max_level) == expected


def test_qufpn_p3_p7_outputs_are_the_quad_nodes():
    nodes = qufpn_nodes(3, 7)
    assert len(nodes) == 21
    assert output_node_ids(nodes, 3, 7) == [21, 22, 23, 24, 25]  # the last five: paths 2 + 4
    with pytest.raises(ValueError, match="at least 3 levels"):
        qufpn_nodes(3, 4)


@pytest.mark.parametrize("graph", ["bifpn", "panet", "qufpn"])
@pytest.mark.parametrize("min_level, max_level", [(2, 4), (2, 6), (3, 7), (2, 8)])
def test_edges_join_adjacent_levels(graph, min_level, max_level):
    nodes = build_graph(graph, min_level, max_level)
    num_inputs = max_level - min_level + 1
    node_level = list(range(min_level, max_level + 1)) + [n.level for n in nodes]
    for index, node in enumerate(nodes):
        assert all(i < num_inputs + index for i in node.inputs), "inputs must be earlier nodes"
        assert all(abs(node_level[i] - node.level) <= 1 for i in node.inputs)
        assert len(node.inputs) >= 2, "nodes with one input are dropped (BiFPN paper)"
    outputs = output_node_ids(nodes, min_level, max_level)
    assert all(i >= num_inputs for i in outputs), "every level's output is a fused node"


def test_unknown_graph_lists_allowed():
    with pytest.raises(ValueError, match="bifpn"):
        build_graph("nasfpn", 3, 7)
