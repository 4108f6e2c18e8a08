"""Mitchell layers: forward against mitchell.matmul, the three backwards, gradcheck, swapping, tracking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kexue import mitchell
from kexue.mitchell.nn import MitchellConv2d, MitchellLinear, mitchellize, track_errors


def _lin(backward: str, dtype=torch.float32, correction=None) -> MitchellLinear:
    torch.manual_seed(0)
    return MitchellLinear(6, 4, backward=backward, correction=correction, dtype=dtype)


def test_forward_is_mitchell_matmul_plus_exact_bias() -> None:
    layer = _lin("mitchell")
    x = torch.randn(3, 2, 6)
    assert torch.equal(layer(x), mitchell.matmul(x, layer.weight.T.contiguous()) + layer.bias)
    exact = nn.functional.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        assert 1e-3 < float((layer(x) - exact).abs().max()) < 0.2 * float(exact.abs().max())


@pytest.mark.parametrize("correction", [None, "constant", "piecewise"])
def test_derivative_backward_passes_gradcheck(correction) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    # the Mitchell product is piecewise linear: finite differences agree away from the kinks
    assert torch.autograd.gradcheck(
        lambda x, w, b: mitchell.linear(x, w, b, backward="derivative", correction=correction),
        (x, w, b),
        eps=1e-7,
        atol=1e-6,
    )


def test_exact_and_mitchell_backwards_are_the_stated_products() -> None:
    x = torch.randn(3, 6, requires_grad=True)
    g = torch.randn(3, 4)
    for mode in ("exact", "mitchell"):
        layer = _lin(mode)
        x.grad = None
        layer(x).backward(g)
        if mode == "exact":
            assert torch.allclose(x.grad, g @ layer.weight) and torch.allclose(layer.weight.grad, g.T @ x.detach())
        else:
            assert torch.equal(x.grad, mitchell.matmul(g, layer.weight.detach().contiguous()))
            assert torch.equal(layer.weight.grad.T, mitchell.matmul(x.detach().T.contiguous(), g))


def test_conv2d_matches_unfold_definition_and_exact_conv_closely() -> None:
    torch.manual_seed(2)
    conv = MitchellConv2d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 9, 9)
    y = conv(x)
    exact = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1, stride=2)
    assert y.shape == exact.shape
    rel = float(((y - exact).norm() / exact.norm()).detach())
    assert 0.005 < rel < 0.1
    y.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.shape == conv.weight.shape
    with pytest.raises(ValueError, match="groups"):
        MitchellConv2d(4, 4, 3, groups=2)


def test_mitchellize_swaps_layers_keeps_parameters_and_tracks_errors() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.ReLU(), nn.Linear(10, 3)
    )
    params = [id(p) for p in model.parameters()]
    mitchellize(model, correction="piecewise", skip=("5",))
    assert isinstance(model[0], MitchellConv2d) and isinstance(model[3], MitchellLinear) and type(model[5]) is nn.Linear
    assert [id(p) for p in model.parameters()] == params
    x = torch.randn(4, 1, 8, 8)
    with track_errors(model) as errors:
        model(x)
        model(x)
    assert set(errors) == {"0", "3"} and all(len(v) == 2 for v in errors.values())
    assert all(0 < e < 0.05 for v in errors.values() for e in v)  # piecewise-corrected: well under Mitchell's few %
    model(x)
    assert all(len(v) == 2 for v in errors.values())  # tracking ended with the block
    with pytest.raises(ValueError, match="backward"):
        mitchellize(model, backward="sgd")
    with pytest.raises(ValueError, match="correction"):
        MitchellLinear(2, 2, correction="table")
