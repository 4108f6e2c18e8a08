"""``kexue reproduce whitening``: the cheap checks in CI, the STS table (a minute of encoding) as slow."""

from __future__ import annotations

import pytest

from kexue.report.claims import ClaimContext
from kexue.whitening import claims


def _run(check) -> dict:
    ctx = ClaimContext(claims.SUITE.technique, claims.SUITE.article, mode="quick")
    claims.SUITE.run_check(check, ctx, debug=True)
    return {c.id: c for c in ctx.claims}


def test_statistics_and_retrieval_claims_pass() -> None:
    got = _run(claims.statistics) | _run(claims.retrieval)
    assert set(got) == {f"whitening.{n}" for n in ("mean0_cov_identity", "matches_reference", "streaming_equals_batch",
                                                   "merged_equals_whole", "two_process_all_reduce", "retrieval")}
    assert [i for i, c in got.items() if c.status != "pass"] == []


@pytest.mark.slow
def test_sts_claims() -> None:
    got = _run(claims.sts)
    assert {i for i, c in got.items() if c.status == "fail"} == set()
    assert got["whitening.mteb.STS-B"].measured == pytest.approx(82.03, abs=0.5)
