"""Heavy checks (``make test-all``): full-scale claims and wider property searches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.orthogonal import apply_orthogonal_map, orthogonal_map, reference
from kexue.orthogonal.claims import SUITE
from kexue.report.claims import ClaimContext

pytestmark = pytest.mark.slow


def test_full_scale_claims_pass() -> None:
    ctx = ClaimContext(SUITE.technique, SUITE.article, mode="full")
    for check in SUITE.checks:
        SUITE.run_check(check, ctx, debug=True)
    assert not [c.id for c in ctx.claims if c.status == "fail"]


@settings(max_examples=300, deadline=None)
@given(
    d=st.integers(2, 1024),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["reflection", "rotation", "symmetric"]),
    near=st.sampled_from([None, 1e-3, 1e-6, 0.0]),
)
def test_float32_apply_close_to_float64_reference(d: int, seed: int, kind: str, near: float | None) -> None:
    """Random dims, and pairs near (or at) the degenerate point, in float32."""
    rng = np.random.default_rng(seed)
    if near is None:
        a, b = reference.unit(rng.standard_normal(d)), reference.unit(rng.standard_normal(d))
    else:
        a, b = reference.near_degenerate_pair(rng, d, kind=kind, gap=near)
    x = rng.standard_normal((8, d)).astype(np.float32)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    # near the degenerate point T is ill-conditioned in (a, b): compare on the same rounded pair
    T64 = orthogonal_map(a32.astype(np.float64), b32.astype(np.float64), kind=kind)
    y32 = apply_orthogonal_map(torch.from_numpy(x), a32, b32, kind=kind)
    err = np.abs(y32.double().numpy() - x.astype(np.float64) @ T64.T).max()
    assert err <= 64 * np.finfo(np.float32).eps * np.abs(x).max(), err
