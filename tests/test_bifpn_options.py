"""Every BiFPN option builds and trains at an odd input size, over a toy bottom-up."""
from dataclasses import fields

import pytest
import timm
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from torch import nn

from bifpn_d2 import (
    BiFPN,
    CellOptions,
    ConvP6P7TopBlock,
    EfficientDetTopBlock,
    EfficientNetBackbone,
    MaxPoolTopBlock,
)
from bifpn_d2.config import add_bifpn_config
from bifpn_d2.layers import ACTIVATIONS, FUSION_METHODS, NORMS, ChannelLayerNorm, LayerStyle
from bifpn_d2.layers.checks import OptionError
from bifpn_d2.modeling.bifpn import BIFPN_STYLE, CONV_INITS
from bifpn_d2.modeling.builders import bifpn_options, build_retinanet_resnet_bifpn_backbone


class ToyBottomUp(Backbone):
    """Three levels at strides 8, 16, 32 with 8, 12, 24 channels: cheap stand-in for a
    ResNet, ``(N, 3, H, W) -> {"c3": (N, 8, H/8, W/8), ...}`` (sizes rounded up)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.down4 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.down5 = nn.Conv2d(12, 24, 3, stride=2, padding=1)
        self._out_features = ["c3", "c4", "c5"]
        self._out_feature_channels = {"c3": 8, "c4": 12, "c5": 24}
        self._out_feature_strides = {"c3": 8, "c4": 16, "c5": 32}

    def forward(self, x):
        c3 = self.stem(x)
        c4 = self.down4(c3)
        return {"c3": c3, "c4": c4, "c5": self.down5(c4)}


CELL_FIELDS = {f.name for f in fields(CellOptions)}


def _bifpn(max_level: int = 7, top_block=None, top_after_cells=None, **options) -> BiFPN:
    """A 2-cell, 16-channel BiFPN over the toy bottom-up; ``options`` are fields of
    :class:`CellOptions` or :class:`LayerStyle` (BN unless given); the levels above c5 come
    from EfficientDet's top block unless ``top_block`` is given."""
    cell = CellOptions(**{k: v for k, v in options.items() if k in CELL_FIELDS})
    style = LayerStyle(**{"norm": "BN", **{k: v for k, v in options.items() if k not in CELL_FIELDS}})
    if top_block is None and max_level > 5:
        top_block = EfficientDetTopBlock(24, 16, max_level - 5, "c5", style)
    return BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], 16, 2, top_block, cell, style,
                 top_after_cells=top_after_cells)


def _train_step(**options):
    torch.manual_seed(0)
    model = _bifpn(**options)
    outputs = model(torch.randn(2, 3, 201, 149))
    assert [tuple(o.shape[-2:]) for o in outputs.values()] == [(26, 19), (13, 10), (7, 5), (4, 3), (2, 2)]
    sum(o.square().mean() for o in outputs.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    return model


@pytest.mark.parametrize("norm", NORMS)
def test_norms(norm):
    _train_step(norm=norm)


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_channel_layer_norm_is_detectron2s_ln(channels_last):
    """"LN" is Detectron2's LayerNorm (same values and parameter names, so its checkpoints
    load), keeps the input's memory layout, and under autocast stays in low precision."""
    from detectron2.layers.batch_norm import LayerNorm

    torch.manual_seed(0)
    reference = LayerNorm(12, eps=1e-3)
    reference.weight.data.uniform_(0.5, 1.5)
    reference.bias.data.uniform_(-0.5, 0.5)
    ours = ChannelLayerNorm(12, eps=1e-3)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 12, 7, 9) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = ours(x)
    torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-5)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=layout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations(activation):
    _train_step(activation=activation)


@pytest.mark.parametrize("fusion", FUSION_METHODS)
def test_fusions(fusion):
    _train_step(fusion=fusion)


@pytest.mark.parametrize("graph", ["bifpn", "panet", "qufpn"])
@pytest.mark.parametrize("separable_conv", [True, False])
@pytest.mark.parametrize("same_padding", [True, False])
def test_graphs_and_convs(graph, separable_conv, same_padding):
    _train_step(graph=graph, separable_conv=separable_conv, same_padding=same_padding)


def test_dense_levels_make_only_their_nodes_dense():
    """``dense_levels`` gives the nodes at those levels a dense 3x3 and leaves every other
    node separable (BiFPN cells over P3-P7: two nodes at each of P4-P6, one at P3 and P7)."""
    model = _train_step(dense_levels=(5, 7))
    for cell in model.cells:
        dense = sorted(3 + node.level_index for node in cell.nodes if node.conv.depthwise is None)
        assert dense == [5, 5, 7]
    assert all(node.conv.depthwise is not None for node in _bifpn().cells[0].nodes)


def test_fusion_input_weight_favours_each_nodes_own_level_input():
    """Every node starts with the edge from the cell's input at its level weighted
    ``fusion_input_weight`` times each of its other edges; the equal split without it."""
    for weight in (3.0, 1.0):
        for cell in _bifpn(fusion_input_weight=weight).cells:
            for node in cell.nodes:
                raw = [weight if i == node.level_index else 1.0 for i in node.input_ids]
                assert raw.count(weight) == 1 or weight == 1.0  # each node has one such edge
                expected = torch.tensor(raw) / sum(raw)
                assert torch.allclose(node.fusion.input_weights(), expected, atol=1e-4)
    for bad, fusion in ((0.0, "fast_normalized"), (2.0, "sum")):
        with pytest.raises(OptionError, match=r"fusion_input_weight=.* it must be > 0, and 1 for a fusion"):
            _bifpn(fusion_input_weight=bad, fusion=fusion)


def test_dense_levels_outside_the_cell_are_refused():
    with pytest.raises(OptionError, match=r"dense_levels=\[8\] .*allowed values: \[3, 4, 5, 6, 7\]"):
        _bifpn(dense_levels=(8,))


@pytest.mark.parametrize("conv_init", CONV_INITS)
def test_conv_inits(conv_init):
    _train_step(conv_init=conv_init)


def test_conv_top_block_makes_p6_p7_from_c5():
    """RetinaNet's learned P6/P7 in place of EfficientDet's max-pools: odd sizes, gradients
    everywhere (checked by _train_step), and the convs read c5."""
    model = _train_step(top_block=ConvP6P7TopBlock(24, 16, "c5"))
    assert model.max_level == 7 and model.top_block.p6.in_channels == 24


def test_top_blocks_after_the_cells_read_the_cells_output():
    """A top block that reads ``p5`` runs after the cells, on their output, and the cells
    span P3-P5 only: FCOS's P6/P7 from P5 train at odd sizes, Faster R-CNN's P6 is the
    cells' P5 subsampled, exactly."""
    model = _train_step(top_block=ConvP6P7TopBlock(16, 16, "p5"))
    assert model.top_after_cells and model.top_block.p6.in_channels == 16
    torch.manual_seed(0)
    model = BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], 16, top_block=MaxPoolTopBlock("p5"))
    assert model.top_after_cells and model.max_level == 6
    assert len(model.cells[0].output_ids) == 3  # P3-P5
    outputs = model(torch.randn(1, 3, 201, 149))
    assert list(outputs) == ["p3", "p4", "p5", "p6"] and outputs["p6"].shape[-2:] == (4, 3)
    assert torch.equal(outputs["p6"], outputs["p5"][:, :, ::2, ::2])
    scripted = torch.jit.script(model.eval())  # the export path takes the same branch
    x = torch.randn(1, 3, 96, 64)
    assert torch.equal(scripted(x)["p6"], model(x)["p6"])
    with pytest.raises(ValueError, match="reads 'p7'"):
        BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], 16, top_block=MaxPoolTopBlock("p7"))


def test_top_block_from_c5_joined_after_the_cells_is_the_fpns():
    """``top_after_cells=True``: P6/P7 read C5 but join after the cells, so no cell fuses them
    and they are exactly the top block of the bottom-up C5 (the FPN's coarse levels); the
    cells span P3-P5; scripting takes the same branch. The builder's "p6p7_c5_after"."""
    model = _train_step(top_block=ConvP6P7TopBlock(24, 16, "c5"), top_after_cells=True)
    assert model.top_after_cells and len(model.cells[0].output_ids) == 3  # P3-P5
    model.eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        outputs = model(x)
        expected = model.top_block(model.bottom_up(x)["c5"])
    assert torch.equal(outputs["p6"], expected[0]) and torch.equal(outputs["p7"], expected[1])
    assert torch.equal(torch.jit.script(model)(x)["p7"], outputs["p7"])
    with pytest.raises(ValueError, match="only run after the cells"):
        BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], 16, top_block=MaxPoolTopBlock("p5"), top_after_cells=False)

    cfg = get_cfg()
    add_bifpn_config(cfg)
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.BIFPN.OUT_CHANNELS, cfg.MODEL.BIFPN.TOP_BLOCK = 16, "p6p7_c5_after"
    built = build_retinanet_resnet_bifpn_backbone(cfg, ShapeSpec(channels=3))
    assert built.top_after_cells and built.top_block.in_feature == "res5"
    assert built.top_block.p6.in_channels == 512 and len(built.cells[0].output_ids) == 3


def test_residual_cells_start_as_the_identity():
    """Residual cells (all but the first here, whose inputs have other widths) train at odd
    sizes with gradients everywhere, and compute the identity at initialisation."""
    model = _train_step(residual=True)
    assert [cell.residual for cell in model.cells] == [False, True]
    assert [cell.residual for cell in _bifpn(residual=False).cells] == [False, False]
    features = [torch.randn(1, 16, 9, 7), torch.randn(1, 16, 5, 4), torch.randn(1, 16, 3, 2)]
    plain = _bifpn(max_level=5, residual=True)
    with torch.no_grad():
        outputs = plain.cells[1](features)
    assert all(torch.equal(a, b) for a, b in zip(outputs, features))


def test_residual_scale_starts_cells_with_that_much_change():
    """residual_scale > 0: the output norms start at that scale, and the cell's output is
    its input plus a change that grows with it."""
    features = [torch.randn(1, 16, 9, 7), torch.randn(1, 16, 5, 4), torch.randn(1, 16, 3, 2)]
    changes = {}
    for scale in (0.1, 1.0):
        torch.manual_seed(0)
        model = _bifpn(max_level=5, residual=True, residual_scale=scale).eval()
        with torch.no_grad():
            outputs = model.cells[1](features)
        changes[scale] = [o - f for o, f in zip(outputs, features)]
        assert all(c.abs().max() > 0 for c in changes[scale])
        cell = model.cells[1]
        norms = [cell.nodes[i - len(features)].conv.norm.weight for i in cell.output_ids]
        assert all(torch.equal(w, torch.full_like(w, scale)) for w in norms)
    for small, full in zip(changes[0.1], changes[1.0]):
        assert small.abs().mean() < full.abs().mean() / 3
    _train_step(residual=True, residual_scale=0.5)
    with pytest.raises(ValueError, match="residual_scale=-1"):
        _bifpn(max_level=5, residual=True, residual_scale=-1)


def test_defaults_are_the_config_defaults():
    """``BiFPN(...)`` without options builds the neck a config that only names the BiFPN
    builder builds: the same cell options and layer style, read through the builder."""
    model = BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], 16, top_block=ConvP6P7TopBlock(24, 16, "c5"))
    options = bifpn_options(add_bifpn_config(get_cfg()))
    assert options["cell"] == CellOptions() and options["style"] == BIFPN_STYLE
    assert len(model.cells) == options["num_cells"] == 3
    assert isinstance(model.cells[1].nodes[0].conv.norm, ChannelLayerNorm) and model.cells[1].residual
    assert model.channels_last


def test_too_few_levels_without_a_top_block():
    with pytest.raises(ValueError, match="at least 3 levels, got P4-P5 .*give a top_block"):
        BiFPN(ToyBottomUp(), ["c4", "c5"], 16)


def test_first_cell_projects_each_edge_separately():
    """A backbone level feeding two nodes gets two 1x1 convs; later cells need none."""
    model = _train_step()
    first, second = model.cells
    projected = [
        (n, k) for n, node in enumerate(first.nodes) for k, e in enumerate(node.edges) if e.conv is not None
    ]
    # c4 -> P4 top-down and P4 bottom-up, c5 -> P5 both; c3 -> P3 top-down (P3 has no bottom-up node).
    assert len(projected) == 5
    assert all(e.conv is None for node in second.nodes for e in node.edges)


def test_efficientnet_weights_load_from_local_file(tmp_path):
    classifier = timm.create_model("efficientnet_b0", pretrained=False)
    path = tmp_path / "efficientnet_b0_imagenet.pth"
    torch.save(classifier.state_dict(), path)
    backbone = EfficientNetBackbone("efficientnet_b0", weights=str(path))
    torch.testing.assert_close(backbone.body.conv_stem.weight, classifier.conv_stem.weight)
    assert backbone.output_shape()["c5"] == ShapeSpec(channels=320, stride=32)


# (option, a value other than the helper's default, what that value must change)
OPTION_EFFECTS = [
    ("norm", "GN", "outputs"),
    ("activation", "relu", "outputs"),
    ("fusion", "sum", "outputs"),
    ("fusion_eps", 0.5, "outputs"),
    ("separable_conv", False, "outputs"),
    ("dense_levels", (4,), "outputs"),
    ("graph", "panet", "outputs"),
    ("graph", "qufpn", "outputs"),
    ("conv_init", "c2_xavier", "outputs"),
    ("fusion_input_weight", 2.0, "outputs"),
    ("residual", False, "outputs"),
    ("residual_scale", 0.5, "outputs"),
    ("same_padding", True, "outputs"),
    ("bias_before_norm", True, "parameters"),
    ("channels_last", False, "layout"),
]


@pytest.mark.parametrize("option, value, effect", OPTION_EFFECTS,
                         ids=[f"{o[0]}={o[1]}" for o in OPTION_EFFECTS])
def test_each_option_changes_what_it_claims(option, value, effect):
    """An option that the neck ignored would pass the shape and gradient checks above:
    here the same seed and input with another value of the option must give other outputs
    (or, for options that promise no change of values, the property they promise)."""
    x = torch.randn(1, 3, 201, 149, generator=torch.Generator().manual_seed(3))
    outputs, models = [], []
    for options in ({}, {option: value}):
        torch.manual_seed(0)
        model = _bifpn(**{"residual": True, **options}).eval()
        models.append(model)
        with torch.no_grad():
            outputs.append(list(model(x).values()))
    if effect == "outputs":
        assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*outputs))
    elif effect == "parameters":
        sizes = [sum(p.numel() for p in m.cells.parameters()) for m in models]
        assert sizes[1] > sizes[0]
    else:
        # the same values up to float rounding (other kernels), in the other memory layout
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(*outputs))
        assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outputs[0])
        assert all(o.is_contiguous() for o in outputs[1])
