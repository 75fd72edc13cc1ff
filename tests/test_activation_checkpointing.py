"""Activation checkpointing of the EfficientNet stages, the BiFPN cells and the
EfficientDet class/box nets: the same outputs, gradients and norm statistics as without
it, with fewer tensors kept for the backward pass."""
import copy
from typing import Callable, Tuple

import pytest
import torch
from _tiny_models import build_tiny_detector, tiny_efficientdet_cfg, training_input, training_losses
from test_bifpn_options import _bifpn

from bifpn_d2.modeling.efficientdet_head import EfficientDetHead, PredictionNet
from bifpn_d2.modeling.efficientnet import EfficientNetBackbone
from bifpn_d2.modeling.pyramid_cell import PyramidCell


def _saved_bytes(run: Callable[[], torch.Tensor]) -> Tuple[torch.Tensor, int]:
    """``run()`` and the bytes of the tensors autograd keeps from it for the backward pass
    (a checkpointed region keeps its own, which it recomputes: those do not count)."""
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(kept)


def _step_both_ways(model: torch.nn.Module, enable: Callable[[torch.nn.Module], None],
                    loss: Callable[[torch.nn.Module], torch.Tensor], seed: int = 0):
    """One forward/backward of ``model`` and of a copy with checkpointing enabled (each
    after ``torch.manual_seed(seed)``: equal random draws); returns the pair of
    (loss, saved bytes) and the two models."""
    checkpointed = copy.deepcopy(model)
    enable(checkpointed)
    results = []
    for m in (model, checkpointed):
        m.train()
        torch.manual_seed(seed)
        value, saved = _saved_bytes(lambda m=m: loss(m))
        value.backward()
        results.append((value.detach(), saved))
    return results, model, checkpointed


def _assert_same_step(model, checkpointed, results, max_saved_fraction: float) -> None:
    (plain_loss, plain_saved), (ckpt_loss, ckpt_saved) = results
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=0)
    for (name, p), q in zip(model.named_parameters(), checkpointed.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
    for (name, b), c in zip(model.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(c, b, rtol=0, atol=0, msg=f"buffer {name} updated twice?")
    assert ckpt_saved < max_saved_fraction * plain_saved, (ckpt_saved, plain_saved)


@pytest.mark.parametrize("norm", ["BN", "GN"])
@pytest.mark.parametrize("residual", [True, False])
def test_checkpointed_cells_train_as_plain_ones(norm, residual):
    torch.manual_seed(0)
    model = _bifpn(norm=norm, residual=residual)
    x = torch.randn(2, 3, 201, 149)

    def loss(m):
        return sum((o * torch.arange(o.shape[1]).view(1, -1, 1, 1)).square().mean() for o in m(x).values())

    results, model, checkpointed = _step_both_ways(model, lambda m: m.set_grad_checkpointing(True), loss)
    assert all(cell.grad_checkpointing for cell in checkpointed.cells)
    # the toy bottom-up and the top block still keep theirs; the cells keep only inputs
    _assert_same_step(model, checkpointed, results, max_saved_fraction=1.0)  # the EfficientNet keeps most


def test_checkpointed_prediction_nets_train_as_plain_ones():
    torch.manual_seed(0)
    head = EfficientDetHead(16, num_levels=3, num_anchors=9, num_classes=3, num_repeats=2)
    features = [torch.randn(2, 16, s, s + 3) for s in (20, 10, 5)]

    def loss(m):
        logits, boxes = m(features)
        return sum(t.square().mean() for t in logits + boxes)

    results, head, checkpointed = _step_both_ways(head, lambda m: m.set_grad_checkpointing(True), loss)
    _assert_same_step(head, checkpointed, results, max_saved_fraction=0.2)


@pytest.mark.parametrize("out_features", [["c3", "c4", "c5"], ["c2", "c4"]])
def test_checkpointed_efficientnet_stages_train_as_plain_ones(out_features):
    torch.manual_seed(0)
    # stochastic depth: the recomputation must draw the same paths as the forward pass
    model = EfficientNetBackbone("efficientnet_b0", out_features, drop_path_rate=0.2)
    x = torch.randn(2, 3, 70, 97)

    def loss(m):
        outputs = m(x)
        assert list(outputs) == out_features
        return sum((o * torch.arange(o.shape[1]).view(1, -1, 1, 1)).square().mean() for o in outputs.values())

    results, model, checkpointed = _step_both_ways(model, lambda m: m.set_grad_checkpointing(True), loss)
    _assert_same_step(model, checkpointed, results, max_saved_fraction=0.2)  # the stem keeps its own


def test_checkpointing_only_acts_in_training_with_gradients():
    torch.manual_seed(0)
    model = _bifpn()
    model.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 64, 96)
    model.eval()
    _, saved_eval = _saved_bytes(lambda: sum(o.sum() for o in model(x).values()))
    model.set_grad_checkpointing(False)
    _, saved_plain = _saved_bytes(lambda: sum(o.sum() for o in model(x).values()))
    assert saved_eval == saved_plain  # eval mode: no checkpointing, nothing changes
    model.set_grad_checkpointing(True)
    model.train()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96))  # no graph: runs the plain path
    scripted = torch.jit.script(model.cells[1])  # TorchScript keeps the plain path
    features = [torch.randn(2, 16, s, s) for s in (8, 4, 2, 1, 1)]
    assert len(scripted(features)) == 5


def test_config_keys_turn_checkpointing_on():
    cfg = tiny_efficientdet_cfg()
    model = build_tiny_detector("", cfg)
    modules = [m for m in model.modules() if isinstance(m, (PyramidCell, PredictionNet))]
    assert modules and not any(m.grad_checkpointing for m in modules)

    assert not model.backbone.bottom_up.grad_checkpointing

    cfg.MODEL.EFFICIENTNET.CHECKPOINT_ACTIVATIONS = True
    cfg.MODEL.BIFPN.CHECKPOINT_ACTIVATIONS = True
    cfg.MODEL.EFFICIENTDET.CHECKPOINT_ACTIVATIONS = True
    checkpointed = build_tiny_detector("", cfg)
    assert checkpointed.backbone.bottom_up.grad_checkpointing
    cells = [m for m in checkpointed.modules() if isinstance(m, PyramidCell)]
    nets = [m for m in checkpointed.modules() if isinstance(m, PredictionNet)]
    assert len(cells) == 2 and len(nets) == 2
    assert all(m.grad_checkpointing for m in cells + nets)

    inputs = [training_input(96, 128, seed=0), training_input(96, 128, seed=1)]
    results = []
    for m in (model, checkpointed):
        m.train()
        losses, saved = _saved_bytes(lambda m=m: sum(training_losses(m, inputs).values()))
        losses.backward()
        results.append((losses.detach(), saved))
    _assert_same_step(model, checkpointed, results, max_saved_fraction=0.3)  # the stem keeps its own

