"""Every BiFPN option builds and trains at an odd input size, over a toy bottom-up."""
import pytest
import timm
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from torch import nn

from bifpn_d2 import BiFPN, ConvP6P7TopBlock, EfficientNetBackbone
from bifpn_d2.layers import ACTIVATIONS, FUSION_METHODS, NORMS
from bifpn_d2.modeling.bifpn import CONV_INITS


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


def _train_step(**options):
    torch.manual_seed(0)
    model = BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], out_channels=16, num_cells=2, max_level=7, **options)
    outputs = model(torch.randn(2, 3, 201, 149))
    assert [tuple(o.shape[-2:]) for o in outputs.values()] == [(26, 19), (13, 10), (7, 5), (4, 3), (2, 2)]
    sum(o.square().mean() for o in outputs.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    return model


@pytest.mark.parametrize("norm", NORMS)
def test_norms(norm):
    _train_step(norm=norm)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations(activation):
    _train_step(activation=activation)


@pytest.mark.parametrize("fusion", FUSION_METHODS)
def test_fusions(fusion):
    _train_step(fusion=fusion)


@pytest.mark.parametrize("graph", ["bifpn", "panet"])
@pytest.mark.parametrize("separable_conv", [True, False])
@pytest.mark.parametrize("same_padding", [True, False])
def test_graphs_and_convs(graph, separable_conv, same_padding):
    _train_step(graph=graph, separable_conv=separable_conv, same_padding=same_padding)


@pytest.mark.parametrize("conv_init", CONV_INITS)
def test_conv_inits(conv_init):
    _train_step(conv_init=conv_init)


def test_conv_top_block_makes_p6_p7_from_c5():
    """RetinaNet's learned P6/P7 in place of EfficientDet's max-pools: odd sizes, gradients
    everywhere (checked by _train_step), and the convs read c5."""
    model = _train_step(top_block=ConvP6P7TopBlock(24, 16, "c5"))
    assert model.max_level == 7 and model.top_block.p6.in_channels == 24


def test_residual_cells_start_as_the_identity():
    """Residual cells (all but the first here, whose inputs have other widths) train at odd
    sizes with gradients everywhere, and compute the identity at initialisation."""
    model = _train_step(residual=True)
    assert [cell.residual for cell in model.cells] == [False, True]
    features = [torch.randn(1, 16, 9, 7), torch.randn(1, 16, 5, 4), torch.randn(1, 16, 3, 2)]
    plain = BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], out_channels=16, num_cells=2, max_level=5, residual=True)
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
        model = BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], out_channels=16, num_cells=2, max_level=5,
                      residual=True, residual_scale=scale).eval()
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
        BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], 16, 2, max_level=5, residual=True, residual_scale=-1)


def test_top_block_must_agree_with_max_level():
    with pytest.raises(ValueError, match="max_level=6 disagrees with the top block, which ends at P7"):
        BiFPN(ToyBottomUp(), ["c3", "c4", "c5"], 16, 1, max_level=6, top_block=ConvP6P7TopBlock(24, 16, "c5"))


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
