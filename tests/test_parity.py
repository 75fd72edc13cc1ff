"""Numerical parity with the reference implementations, given the same weights:
Detectron2's own FPN, and effdet's (rwightman's EfficientDet) BiFPN neck."""
import pytest
import torch
from conftest import small_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone, build_retinanet_resnet_fpn_backbone

from bifpn_d2 import BiFPN, CellOptions, EfficientDetTopBlock, EfficientNetBackbone
from bifpn_d2.convert import convert_effdet_state_dict
from bifpn_d2.layers import LayerStyle
from bifpn_d2.modeling.builders import (
    build_resnet_weighted_fpn_backbone,
    build_retinanet_resnet_weighted_fpn_backbone,
)


@pytest.mark.parametrize(
    "ours, reference",
    [
        (build_resnet_weighted_fpn_backbone, build_resnet_fpn_backbone),
        (build_retinanet_resnet_weighted_fpn_backbone, build_retinanet_resnet_fpn_backbone),
    ],
)
def test_fpn_equals_detectron2(ours, reference):
    cfg = small_cfg(ours.__name__)
    cfg.MODEL.FPN.OUT_CHANNELS = 256
    torch.manual_seed(0)
    d2_fpn = reference(cfg, ShapeSpec(channels=3)).eval()
    our_fpn = ours(cfg, ShapeSpec(channels=3)).eval()
    # A Detectron2 checkpoint loads with no missing or unexpected keys.
    assert set(our_fpn.state_dict()) == set(d2_fpn.state_dict())
    our_fpn.load_state_dict(d2_fpn.state_dict(), strict=True)
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        expected, actual = d2_fpn(x), our_fpn(x)
    assert list(actual) == list(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)  # README: identical


def _randomize(model: torch.nn.Module) -> None:
    """Non-trivial norm statistics, biases and fusion weights, so parity means something."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
        for name, p in model.named_parameters():
            if "edge_weights" in name:
                p.uniform_(-0.5, 2.0, generator=generator)
            elif name.startswith("fpn.") and name.endswith(".bias"):
                p.uniform_(-0.2, 0.2, generator=generator)


@pytest.mark.parametrize(
    "effdet_name, same_padding, graph, num_params",
    [("efficientdet_d0", False, "bifpn", 194_361), ("tf_efficientdet_d0", True, "bifpn", 196_281),
     ("efficientdet_q0", False, "qufpn", 442_832)],
)
def test_bifpn_equals_effdet(effdet_name, same_padding, graph, num_params):
    effdet = pytest.importorskip("effdet")
    reference = effdet.create_model(effdet_name, pretrained=False, pretrained_backbone=False).eval()
    _randomize(reference)
    bottom_up = EfficientNetBackbone(effdet_name.replace("det_d0", "net_b0").replace("det_q0", "net_b0"),
                                     ["c3", "c4", "c5"])
    style = LayerStyle("BN", same_padding=same_padding, bias_before_norm=same_padding)
    top_block = EfficientDetTopBlock(320, 64, num_levels=2, in_feature="c5", style=style)  # P6, P7
    ours = BiFPN(bottom_up, ["c3", "c4", "c5"], 64, num_cells=3, top_block=top_block,
                 cell=CellOptions(graph=graph, residual=False), style=style).eval()

    state, unconverted = convert_effdet_state_dict(reference.state_dict(), ours)
    assert all(k.startswith(("class_net.", "box_net.")) for k in unconverted)
    ours.load_state_dict(state, strict=True)
    neck_params = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith("bottom_up."))
    assert neck_params == sum(p.numel() for p in reference.fpn.parameters()) == num_params

    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        features = reference.backbone(x)
        expected = reference.fpn(list(features))  # effdet appends P6/P7 to the list it gets
        actual = ours(x)
    assert list(actual) == ["p3", "p4", "p5", "p6", "p7"]
    for level, reference_output in zip(range(3, 8), expected):
        # README: max abs difference 1.3e-7 / 3.6e-7 (float32 rounding); 1e-6 leaves a ~3x margin.
        torch.testing.assert_close(actual[f"p{level}"], reference_output, rtol=0, atol=1e-6)
