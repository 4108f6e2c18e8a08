"""The flow baseline: invertible-by-construction layers, likelihood that improves, Gaussian output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kexue.whitening.flow import FlowWhitening, VectorFlow


def test_log_determinant_matches_autograd_jacobian() -> None:
    torch.manual_seed(0)
    flow = VectorFlow(6, n_layers=2, hidden=16).double()
    x = torch.randn(40, 6, dtype=torch.float64)
    flow(x)  # ActNorm's data-dependent initialisation
    for p in flow.parameters():  # move away from the identity start
        p.data.add_(0.1 * torch.randn_like(p))
    point = torch.randn(1, 6, dtype=torch.float64)
    _, logdet = flow(point)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], point[0])
    assert float(logdet.detach()) == pytest.approx(float(torch.linalg.slogdet(jac).logabsdet), abs=1e-10)


def test_fit_gaussianises_a_skewed_distribution() -> None:
    rng = np.random.default_rng(0)
    x = np.exp(rng.standard_normal((4000, 4)) * 0.7) @ rng.standard_normal((4, 4))
    flow = FlowWhitening(n_layers=4, hidden=32, epochs=15, lr=3e-3).fit(x)
    assert flow.loss_curve_[-1] < flow.loss_curve_[0]
    z = flow.transform(x)
    skew = np.abs(((z - z.mean(0)) ** 3).mean(0) / z.std(0) ** 3).max()
    raw_skew = np.abs(((x - x.mean(0)) ** 3).mean(0) / x.std(0) ** 3).max()
    assert skew < 0.5 * raw_skew


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        FlowWhitening().fit(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="epochs"):
        FlowWhitening(epochs=0).fit(np.zeros((4, 2)))
