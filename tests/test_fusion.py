"""Weighted fusion against hand computation, and the published implementation mistakes."""
import pytest
import torch

from bifpn_d2.layers import CHANNEL_METHODS, FUSION_METHODS, WeightedFusion

SCALAR_METHODS = [m for m in FUSION_METHODS if m not in CHANNEL_METHODS]


def _inputs():
    torch.manual_seed(0)
    return [torch.randn(2, 3, 5, 7) for _ in range(3)]


def test_learnable_weights_start_at_one():
    for method in ("weighted", "softmax", "fast_normalized"):
        fusion = WeightedFusion(3, method)
        assert torch.equal(fusion.weight.detach(), torch.ones(3))
    assert WeightedFusion(3, "sum").weight is None


@pytest.mark.parametrize("method", ["weighted", "softmax", "fast_normalized"] + list(CHANNEL_METHODS))
def test_learnable_weights_start_at_a_given_split(method):
    """``initial`` sets the inputs' starting weights relative to each other: the normalised
    split of a normalising fusion, the weights themselves of the unbounded one. It builds
    on the meta device too (large configs are sized there, with no values to read)."""
    fusion = WeightedFusion(3, method, eps=0.0, channels=4, initial=(2, 1, 1))
    expected = torch.tensor([2.0, 1.0, 1.0]) / (1 if method == "weighted" else 4)
    assert torch.allclose(fusion.input_weights(), expected)
    with torch.device("meta"):
        assert WeightedFusion(3, method, channels=4, initial=(2, 1, 1)).weight.is_meta


def test_an_initial_split_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="learns no weights"):
        WeightedFusion(2, "sum", initial=(2, 1))
    assert WeightedFusion(2, "avg", initial=(1, 1)).weight is None  # the equal split is avg's own
    with pytest.raises(ValueError, match="2 values > 0"):
        WeightedFusion(2, "fast_normalized", initial=(1, 0))
    with pytest.raises(ValueError, match="2 values > 0"):
        WeightedFusion(2, "fast_normalized", initial=(1, 1, 1))


@pytest.mark.parametrize("method", SCALAR_METHODS)
def test_fusion_matches_hand_computation(method):
    a, b, c = _inputs()
    fusion = WeightedFusion(3, method, eps=1e-4)
    if fusion.weight is not None:
        with torch.no_grad():
            fusion.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
    w0, w1, w2 = 2.0, -1.0, 0.5
    if method == "sum":
        expected = a + b + c
    elif method == "avg":
        expected = (a + b + c) / 3
    elif method == "weighted":
        expected = w0 * a + w1 * b + w2 * c
    elif method == "softmax":
        e = [torch.exp(torch.tensor(w)) for w in (w0, w1, w2)]
        total = e[0] + e[1] + e[2]
        expected = e[0] / total * a + e[1] / total * b + e[2] / total * c
    else:  # fast normalized: relu, then divide by eps + sum
        denominator = 1e-4 + 2.0 + 0.0 + 0.5
        expected = 2.0 / denominator * a + 0.0 * b + 0.5 / denominator * c
    torch.testing.assert_close(fusion([a, b, c]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["weighted", "softmax", "fast_normalized", *CHANNEL_METHODS])
def test_fusion_backward_reaches_weights_and_inputs(method):
    """No in-place normalisation: autograd works, every input gets a gradient, and so does
    every weight (each channel's own, for the channel-wise kinds), at an odd size (5 x 7)."""
    inputs = [x.requires_grad_() for x in _inputs()]
    fusion = WeightedFusion(3, method, channels=3)
    initial = fusion.weight.detach().clone()
    # A loss whose gradient differs between inputs and channels, so that no weight's
    # gradient cancels by symmetry (the normalised weights sum to 1 over the inputs).
    scale = torch.arange(1.0, 4.0).view(1, 3, 1, 1)
    (fusion(inputs) * scale).square().sum().backward()
    grad = fusion.weight.grad
    assert grad is not None and grad.shape == fusion.weight.shape and torch.isfinite(grad).all()
    assert (grad != 0).all(), grad
    assert all(x.grad is not None for x in inputs)
    assert torch.equal(fusion.weight.detach(), initial), "backward must not modify the weights"


def test_fast_normalized_weights_sum_to_one():
    fusion = WeightedFusion(4, "fast_normalized", eps=1e-4)
    weights = fusion.normalized_weights()
    assert torch.allclose(weights, torch.full((4,), 1 / (4 + 1e-4)))


def test_invalid_method_names_allowed_values():
    with pytest.raises(ValueError, match="fast_normalized"):
        WeightedFusion(2, "attention")


@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_channel_wise_fusion_matches_hand_computation(method):
    """One weight per channel per input (google/automl): each channel is normalised over
    the inputs on its own, so channels with other weights are fused differently."""
    a, b, c = _inputs()  # (2, 3, 5, 7): 3 channels
    fusion = WeightedFusion(3, method, eps=1e-4, channels=3)
    assert torch.equal(fusion.weight.detach(), torch.ones(3, 3))
    raw = torch.tensor([[2.0, 1.0, -1.0], [-1.0, 1.0, 3.0], [0.5, 1.0, 0.0]])  # (inputs, channels)
    with torch.no_grad():
        fusion.weight.copy_(raw)
    if method == "channel_softmax":
        w = torch.exp(raw) / torch.exp(raw).sum(dim=0)
    else:
        w = raw.clamp(min=0) / (raw.clamp(min=0).sum(dim=0) + 1e-4)
    expected = torch.stack(
        [w[0, k] * a[:, k] + w[1, k] * b[:, k] + w[2, k] * c[:, k] for k in range(3)], dim=1
    )
    torch.testing.assert_close(fusion([a, b, c]), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fusion.input_weights(), w.mean(dim=1))
    # The scalar kind with the same first column fuses channel 0 alike, the others not.
    scalar = WeightedFusion(3, method.replace("channel_", ""), eps=1e-4)
    with torch.no_grad():
        scalar.weight.copy_(raw[:, 0])
    out, ref = fusion([a, b, c]), scalar([a, b, c])
    torch.testing.assert_close(out[:, 0], ref[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[:, 1:], ref[:, 1:])


def test_channel_wise_fusion_needs_channels():
    with pytest.raises(ValueError, match="channels"):
        WeightedFusion(2, "channel_softmax")
