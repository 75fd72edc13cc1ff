"""Mixed precision: autocast forward/backward of our necks, low-precision fusion weights,
and training a detector under autocast.

Detectron2's ``AMPTrainer`` (used when ``SOLVER.AMP.ENABLED``) asserts that CUDA is
available, so on CPU the training test runs the same steps by hand: autocast forward,
loss, backward, optimizer step. With CUDA it runs ``AMPTrainer`` itself (fp16 with a
gradient scaler).
"""
import pytest
import torch
from _tiny_models import TinyBottomUp, tiny_cfg, training_input, training_losses
from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model

from bifpn_d2.layers import WeightedFusion
from bifpn_d2.modeling import BiFPN, CellOptions, ConvP6P7TopBlock, MaxPoolTopBlock, WeightedFPN

LOW_PRECISION = [torch.bfloat16, torch.float16]


def _neck(kind: str, fusion: str) -> torch.nn.Module:
    """Our neck around a bottom-up of almost no compute (low-precision convs are slow on
    CPUs without bf16/fp16 instructions): BiFPN P3-P7 or FPN P2-P6."""
    if kind == "bifpn":
        return BiFPN(TinyBottomUp(), ["res3", "res4", "res5"], 16, num_cells=2,
                     top_block=ConvP6P7TopBlock(32, 16, "res5"), cell=CellOptions(fusion=fusion))
    return WeightedFPN(TinyBottomUp(), ["res2", "res3", "res4", "res5"], 16, top_block=MaxPoolTopBlock("p5"),
                       fuse_type=fusion)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "fp16"])
@pytest.mark.parametrize("fusion", ["fast_normalized", "softmax"])
@pytest.mark.parametrize("kind", ["bifpn", "fpn"])
def test_autocast_forward_backward(kind, fusion, dtype):
    torch.manual_seed(0)
    backbone = _neck(kind, fusion).train()
    x = torch.randn(2, 3, 160, 192)
    with torch.autocast("cpu", dtype=dtype):
        outputs = backbone(x)
        loss = sum(o.float().square().mean() for o in outputs.values())
    loss.backward()
    for name, out in outputs.items():
        assert out.dtype == dtype, name  # autocast did run the neck in low precision
        assert torch.isfinite(out).all(), name
    grads = {n: p.grad for n, p in backbone.named_parameters() if p.requires_grad}
    assert any("fusion" in n for n in grads)
    bad = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]
    assert not bad, f"missing or non-finite gradients: {bad}"


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "method", ["fast_normalized", "softmax", "weighted", "channel_fast_normalized", "channel_softmax"]
)
def test_fusion_weights_normalised_in_float32(method, dtype):
    """A fusion cast to fp16/bf16 normalises its weights in float32, then casts them.

    The weights here are large enough that their fp16 sum overflows (> 65504): normalised
    in fp16, fast normalized fusion would give 0 * inputs."""
    fusion = WeightedFusion(2, method, channels=2)
    with torch.no_grad():  # every channel alike for the channel-wise kinds
        fusion.weight.copy_(torch.tensor([40000.0, 30000.0]).view(2, *[1] * (fusion.weight.dim() - 1)))
    fusion = fusion.to(dtype)
    weights = fusion.normalized_weights()
    assert weights.dtype == torch.float32
    reference = WeightedFusion(2, method, channels=2)
    with torch.no_grad():
        reference.weight.copy_(fusion.weight.float())
    torch.testing.assert_close(weights, reference.normalized_weights(), rtol=0, atol=0)
    inputs = [torch.ones(1, 2, 3, 3, dtype=dtype), torch.full((1, 2, 3, 3), 2.0, dtype=dtype)]
    out = fusion(inputs)
    assert out.dtype == dtype
    weights = weights.view(2, -1, 1, 1)  # per input: one factor, or one per channel
    expected = (inputs[0].float() * weights[0] + inputs[1].float() * weights[1]).to(dtype)
    torch.testing.assert_close(out, expected)
    if method.endswith("fast_normalized"):
        assert 1.0 < out.float().min() < 2.0


def _losses_under_autocast(model, batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return training_losses(model, batch)


def test_autocast_training_loop_cpu():
    """A tiny RetinaNet-BiFPN trains for 2 steps under bf16 autocast: finite losses,
    finite updated weights."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("build_retinanet_resnet_bifpn_backbone")).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(2):
        losses = _losses_under_autocast(model, [training_input(64, 96, seed=10 * step + i) for i in range(2)])
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    params = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    fusion = [n for n in params if "fusion" in n]
    assert any(not torch.equal(params[n], before[n]) for n in fusion)


@pytest.mark.skipif(torch.cuda.is_available(), reason="documents the CPU behaviour")
def test_amp_trainer_requires_cuda():
    """Detectron2 0.7's AMPTrainer refuses to run without CUDA (hence the manual loop above)."""
    model = build_model(tiny_cfg("build_retinanet_resnet_bifpn_backbone")).train()
    data = iter([[training_input(64, 96)]])
    trainer = AMPTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.raises(AssertionError, match="CUDA is required"):
        trainer.run_step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMPTrainer needs CUDA")
def test_amp_trainer_cuda():
    """``SOLVER.AMP.ENABLED`` training: AMPTrainer, fp16 with a gradient scaler."""
    from detectron2.utils.events import EventStorage

    cfg = tiny_cfg("build_retinanet_resnet_bifpn_backbone")
    cfg.MODEL.DEVICE = "cuda"
    model = build_model(cfg).train()
    data = iter([[training_input(128, 160, seed=s) for s in range(2)] for _ in range(3)])
    trainer = AMPTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.01))
    with EventStorage() as storage:
        for step in range(3):
            storage.iter = step
            trainer.run_step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert torch.isfinite(torch.tensor(storage.history("total_loss").latest()))
