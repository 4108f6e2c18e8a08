"""Sinusoidal tables against the loop reference; the analysis helpers against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.positional import reference
from kexue.positional.sinusoidal import (
    ThetaSchedule,
    exponential_schedule,
    integral_approximation,
    power_schedule,
    relative_inner_products,
    sinusoidal_table,
    sinusoidal_table_nd,
)


@pytest.mark.parametrize("layout", ["interleaved", "concat"])
def test_table_matches_loop_reference(layout: str) -> None:
    positions = [0, 1, 2.5, 17, 511, 100_000.25, -3]
    got = sinusoidal_table(torch.tensor(positions, dtype=torch.float64), 32, layout=layout, dtype=torch.float64)
    want = reference.sinusoidal_reference(positions, 32, layout=layout)
    assert np.abs(got.numpy() - want).max() < 1e-11


def test_paper_layout_entries() -> None:
    table = sinusoidal_table(3, 4, dtype=torch.float64)
    assert table[2, 0] == pytest.approx(np.sin(2.0)) and table[2, 1] == pytest.approx(np.cos(2.0))
    assert table[2, 2] == pytest.approx(np.sin(2.0 / 100.0)) and table[2, 3] == pytest.approx(np.cos(2.0 / 100.0))


def test_any_shape_numpy_roundtrip_and_output_dtype() -> None:
    positions = np.arange(12.0).reshape(3, 4)
    table = sinusoidal_table(positions, 8)
    assert isinstance(table, np.ndarray) and table.shape == (3, 4, 8)
    bf = sinusoidal_table(torch.tensor([40_000]), 64, dtype=torch.bfloat16)
    exact = sinusoidal_table(torch.tensor([40_000]), 64, dtype=torch.float64)
    assert torch.equal(bf, exact.to(torch.bfloat16))  # rounded once from float64 angles


def test_nd_table_concatenates_axes() -> None:
    pos = torch.tensor([[3.0, 5.0], [0.0, 1.5]])
    table = sinusoidal_table_nd(pos, 16, dtype=torch.float64)
    assert torch.equal(table[:, :8], sinusoidal_table(pos[:, 0], 8, dtype=torch.float64))
    assert torch.equal(table[:, 8:], sinusoidal_table(pos[:, 1], 8, dtype=torch.float64))
    assert sinusoidal_table_nd(pos, 12, split=[4, 8]).shape == (2, 12)


@settings(max_examples=30, deadline=None)
@given(m=st.floats(-1e4, 1e4), n=st.floats(-1e4, 1e4), dim=st.sampled_from([2, 8, 64, 128]))
def test_relativity_property(m: float, n: float, dim: int) -> None:
    p = sinusoidal_table(torch.tensor([m, n], dtype=torch.float64), dim, dtype=torch.float64)
    g = relative_inner_products(n - m, dim)
    assert float(p[0] @ p[1]) == pytest.approx(float(g), abs=1e-9 * dim)


def test_exponential_closed_form_matches_quadrature() -> None:
    delta = np.arange(0, 3000, 7.0)
    closed = exponential_schedule(10000).exact
    assert closed is not None
    numeric = integral_approximation(delta, 128, schedule=ThetaSchedule("numeric", exponential_schedule(10000).theta))
    assert np.abs(integral_approximation(delta, 128) - numeric).max() < 1e-10
    assert integral_approximation([0.0], 128)[0] == 64.0
    linear = power_schedule(1)
    numeric_linear = integral_approximation(delta, 64, schedule=ThetaSchedule("n", linear.theta))
    assert np.abs(integral_approximation(delta, 64, schedule=linear) - numeric_linear).max() < 1e-10


def test_sum_approaches_integral_as_dim_grows() -> None:
    delta = np.arange(0, 2000.0)
    gaps = [
        np.abs(relative_inner_products(delta, d) - integral_approximation(delta, d)).max() / (d / 2)
        for d in (64, 256, 1024)
    ]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.06


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sinusoidal_table(4, 7), "dim=7"),
        (lambda: sinusoidal_table(torch.tensor([0.0, float("inf")]), 8), "non-finite"),
        (lambda: sinusoidal_table(4, 8, layout="stacked"), "layout='stacked'"),
        (lambda: sinusoidal_table(4, 8, base=0.5), "base=0.5"),
        (lambda: sinusoidal_table(-1, 8), "positions=-1"),
        (lambda: sinusoidal_table_nd(torch.zeros(3, 2), 10), "does not split"),
        (lambda: power_schedule(0), "alpha=0"),
        (lambda: relative_inner_products([np.nan], 8), "finite"),
    ],
)
def test_errors(call, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call()
