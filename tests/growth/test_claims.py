"""``kexue reproduce growth``: the parity and article-table checks in CI, the training experiment as slow."""

from __future__ import annotations

import pytest

from kexue.growth import claims
from kexue.growth.zoo import ZOO


def test_parity_table_passes_for_every_architecture_and_operator(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.parity).by_id
    assert [i for i, c in got.items() if c.status != "pass"] == []
    table = got["growth.parity_table"].measured
    assert set(table) == {"minilm (BERT, real)", *ZOO}
    assert "depth x2" in table["qwen2-bias-gqa"] and "depth x2" not in table["minilm (BERT, real)"]
    assert "experts x2" in table["mixtral"] and "head_dim k=2 (the article's)" in table["gpt2"]
    assert all("widen k=2, saved and reloaded" in ops for ops in table.values())
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
    recipes = {"width", "width_early", "depth", "stack"}
    assert {i.removeprefix("growth.flops_saved.") for i in got if i.startswith("growth.flops_saved.")} == recipes
