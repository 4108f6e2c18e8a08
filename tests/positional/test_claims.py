"""``kexue reproduce sinusoidal rope`` at quick scale: judged claims pass, ids are stable, figures exist."""

from __future__ import annotations

import pytest

from kexue.positional import claims
from kexue.report.claims import ClaimContext

SINUSOIDAL_IDS = {
    "sinusoidal.relativity.integer",
    "sinusoidal.relativity.fractional",
    "sinusoidal.decay.envelope",
    "sinusoidal.decay.limit",
    "sinusoidal.sum_to_integral",
    "sinusoidal.schedules.base_stretches_decay",
    "sinusoidal.schedules.comparison",
}
ROPE_IDS = (
    {f"rope.relativity.{c}_{k}" for c in ("1d", "2d_axial", "3d_axial", "2d_mixed") for k in ("integer", "fractional")}
    | {f"rope.orthogonality.{c}" for c in ("1d", "2d_axial", "3d_axial", "2d_mixed")}
    | {
        "rope.invertibility.2d_axial",
        "rope.invertibility.3d_axial",
        "rope.invertibility.2d_mixed",
        "rope.invertibility.single_block_counterexample",
        "rope.one_d.special_case",
        "rope.flattened.neighbour_distances",
        "rope.flattened.breaks_2d_relativity",
        "rope.quaternion.breaks_relativity",
        "rope.fast_path.native_available",
        "rope.layout_conversion",
        "rope.scaling.matches_transformers",
        "rope.scaling.analysis",
        "rope.mrope.block_solution",
    }
    | {f"rope.fast_path.{b}_{d}" for b in ("native", "torch") for d in ("float64", "float32", "bfloat16")}
)


def _run(suite, skip: tuple[str, ...] = ()) -> ClaimContext:
    ctx = ClaimContext(suite.technique, suite.article, mode="quick")
    for check in suite.checks:
        if check.__name__ not in skip:
            suite.run_check(check, ctx, debug=True)
    return ctx


@pytest.fixture(scope="module")
def sinusoidal() -> ClaimContext:
    return _run(claims.SINUSOIDAL)


@pytest.fixture(scope="module")
def rope() -> ClaimContext:
    return _run(claims.ROPE, skip=("vit_experiment",))  # the ViT runs in test_vit.py (slow)


def test_sinusoidal_ids_and_verdicts(sinusoidal: ClaimContext) -> None:
    assert {c.id for c in sinusoidal.claims} == SINUSOIDAL_IDS
    assert all(c.status in ("pass", "documented") for c in sinusoidal.claims), [
        c for c in sinusoidal.claims if c.status == "fail"
    ]
    assert {f.name for f in sinusoidal.figures} == {"sinusoidal_decay", "sinusoidal_schedules"}


def test_rope_ids_and_verdicts(rope: ClaimContext) -> None:
    assert {c.id for c in rope.claims} == ROPE_IDS
    assert all(c.status in ("pass", "documented") for c in rope.claims), [c for c in rope.claims if c.status == "fail"]


def test_measured_values_are_the_expected_sizes(rope: ClaimContext, sinusoidal: ClaimContext) -> None:
    by_id = {c.id: c for c in rope.claims + sinusoidal.claims}
    assert by_id["rope.flattened.breaks_2d_relativity"].measured["flattened max |ΔR|"] < 1e-12
    assert by_id["rope.quaternion.breaks_relativity"].measured["max |R_1ᵀR_2 − R_(2−1)|"] > 0.1
    assert by_id["rope.invertibility.single_block_counterexample"].measured == 0.0
    assert "8192" in by_id["sinusoidal.decay.limit"].measured
