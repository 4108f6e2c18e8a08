"""``kexue reproduce orthogonal`` at quick scale: every judged claim passes, ids are stable."""

from __future__ import annotations

import pytest

from kexue.orthogonal.claims import SUITE
from kexue.report.claims import ClaimContext

EXPECTED_IDS = (
    {
        f"orthogonal.{kind}.{name}"
        for kind in ("reflection", "rotation", "symmetric")
        for name in (
            "orthogonality",
            "maps_a_to_b",
            "determinant",
            "worked_example",
            "closed_form_equals_construction",
            "fast_matches_reference",
        )
    }
    | {
        "orthogonal.reflection.maps_b_to_a",
        "orthogonal.symmetric.maps_b_to_a",
        "orthogonal.rotation.inverse_maps_b_to_a",
        "orthogonal.rotation.fixes_complement",
        "orthogonal.degenerate.reflection_canonical",
        "orthogonal.degenerate.rotation_canonical",
        "orthogonal.degenerate.symmetric_canonical",
        "orthogonal.degenerate.printed_formulas",
    }
    | {
        f"orthogonal.near_degenerate.{k}_{w}_{dtype}"
        for k in ("reflection", "rotation", "symmetric")
        for w in ("printed", "kexue")
        for dtype in ("float32", "float64")
    }
)


@pytest.fixture(scope="module")
def ctx() -> ClaimContext:
    ctx = ClaimContext(SUITE.technique, SUITE.article, mode="quick")
    for check in SUITE.checks:
        SUITE.run_check(check, ctx, debug=True)
    return ctx


def test_claim_ids_are_the_stable_set(ctx: ClaimContext) -> None:
    ids = [c.id for c in ctx.claims]
    assert len(ids) == len(set(ids))
    assert set(ids) == EXPECTED_IDS


def test_every_judged_claim_passes(ctx: ClaimContext) -> None:
    failed = [(c.id, c.measured) for c in ctx.claims if c.status == "fail"]
    assert not failed


def test_documented_claims_show_the_printed_formulas_breaking(ctx: ClaimContext) -> None:
    by_id = {c.id: c for c in ctx.claims}
    assert {c.id for c in ctx.claims if c.status == "documented"} == {
        "orthogonal.degenerate.printed_formulas",
        *(
            f"orthogonal.near_degenerate.{k}_printed_{t}"
            for k in ("reflection", "rotation", "symmetric")
            for t in ("float32", "float64")
        ),
    }
    assert by_id["orthogonal.degenerate.printed_formulas"].measured == (
        "reflection 256/256, rotation 256/256, symmetric 256/256 entries non-finite"
    )
    # the measured breakdown is real: far above float32 epsilon (inf for the 1/(1+cos) forms)
    assert by_id["orthogonal.near_degenerate.rotation_printed_float32"].measured == "inf"
    assert by_id["orthogonal.near_degenerate.reflection_printed_float32"].measured > 1e-3
    assert by_id["orthogonal.near_degenerate.reflection_printed_float64"].measured > 1e-3


def test_figures_are_produced(ctx: ClaimContext) -> None:
    assert [f.name for f in ctx.figures] == ["worked_example", "near_degenerate_float32"]
    assert all(f.png.startswith(b"\x89PNG") for f in ctx.figures)
