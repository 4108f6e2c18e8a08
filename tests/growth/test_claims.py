"""``kexue reproduce growth``: the parity and article-table checks in CI, the training experiment as slow."""

from __future__ import annotations

import pytest

from kexue.growth import claims


def test_parity_table_passes_for_every_architecture_and_operator(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.parity).by_id
    assert [i for i, c in got.items() if c.status != "pass"] == []
    table = got["growth.parity_table"].measured
    assert set(table) == {"minilm (BERT, real)", "gpt2 (random)", "llama gqa untied (random)", "llama tied (random)", "qwen2 bias gqa (random)"}
    assert "depth x2" in table["qwen2 bias gqa (random)"] and "depth x2" not in table["minilm (BERT, real)"]
    assert got["growth.parity.float64"].measured <= 1e-10


def test_article_table_and_inexact_cases(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.article_table, claims.inexact, claims.symmetry_and_optimizer).by_id
    assert [i for i, c in got.items() if c.status == "fail"] == []
    bias = got["growth.article_table.second_bias"]
    assert bias.measured["kept"] <= 1e-10 and min(bias.measured["changed"].values()) > 1e-6
    assert got["growth.article_table.ln_eps"].measured["changed"]["gpt2"] > 1e-8
    assert got["growth.inexact.rope_head_dim"].status == "documented"
    assert got["growth.inexact.rope_head_dim"].measured["llama"] > 1e-3
    assert 0 < max(got["growth.inexact.eps_not_scaled"].measured.values()) < 1e-2


@pytest.mark.slow
def test_compute_saved_quick(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.compute_saved).by_id
    assert got["growth.flops_saved"].status == "pass" and got["growth.flops_saved"].measured > 0
    assert "growth.flops_saved_depth" in got
