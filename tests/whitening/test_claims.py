"""``kexue reproduce whitening``: the cheap checks in CI, the STS table (a minute of encoding) as slow."""

from __future__ import annotations

import pytest

from kexue.whitening import claims


def test_statistics_and_retrieval_claims_pass(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.statistics, claims.retrieval).by_id
    assert set(got) == {
        f"whitening.{n}"
        for n in (
            "mean0_cov_identity",
            "matches_reference",
            "streaming_equals_batch",
            "merged_equals_whole",
            "two_process_all_reduce",
            "retrieval",
        )
    }
    assert [i for i, c in got.items() if c.status != "pass"] == []


@pytest.mark.slow
def test_sts_claims(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.sts).by_id
    assert {i for i, c in got.items() if c.status == "fail"} == set()
    assert got["whitening.mteb.STS-B"].measured == pytest.approx(82.03, abs=0.5)
    assert got["whitening.retrieval.real_sentences"].status == "pass"  # the same encodings, searched


@pytest.mark.slow
def test_raw_encoder_claims(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.raw_encoder).by_id
    assert {i for i, c in got.items() if c.status == "fail"} == set()
    helps = got["whitening.raw_encoder.whitening_helps"].measured
    assert helps["whitening"] > helps["raw"] + 5  # the article's effect, on an anisotropic raw encoder
    rows = got["whitening.raw_encoder.table"].table["rows"]
    assert {r[1] for r in rows} >= {"raw", "whitening", "whitening-48", "flow (all tasks)"}
    assert got["whitening.raw_encoder.isotropy"].status == "pass"
