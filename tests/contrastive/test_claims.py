"""``kexue reproduce contrastive`` at quick scale: judged claims pass and ids are stable."""

from __future__ import annotations

from kexue.contrastive.claims import SUITE
from kexue.report.claims import ClaimContext

IDS = {
    f"contrastive.{name}.{dt}"
    for name in ("cached_equals_full", "naive_accumulation_gap", "no_replay_gap")
    for dt in ("float32", "float64")
} | {
    "contrastive.surrogate_is_not_the_loss",
    "contrastive.gradient_identity",
    "contrastive.tiled_equals_dense",
    "contrastive.time_split",
    "contrastive.two_process_gloo",
    "contrastive.fine_tune_stsb",
}


def test_ids_and_verdicts() -> None:
    ctx = ClaimContext(SUITE.technique, SUITE.article, mode="quick")
    for check in SUITE.checks:
        SUITE.run_check(check, ctx, debug=True)
    assert {c.id for c in ctx.claims} == IDS
    assert [c.id for c in ctx.claims if c.status == "fail"] == []
    by_id = {c.id: c for c in ctx.claims}
    assert by_id["contrastive.cached_equals_full.float64"].measured <= 1e-10
    surrogate = by_id["contrastive.surrogate_is_not_the_loss"].measured
    assert abs(surrogate["surrogate value"] - surrogate["true loss"]) > 1e-3
