"""``kexue reproduce growth``: the parity and article-table checks in CI, the training experiment as slow."""

from __future__ import annotations

import pytest

from kexue.growth import claims
from kexue.report.claims import ClaimContext


def _run(check) -> dict:
    ctx = ClaimContext(claims.SUITE.technique, claims.SUITE.article, mode="quick")
    claims.SUITE.run_check(check, ctx, debug=True)
    return {c.id: c for c in ctx.claims}


def test_parity_table_passes_for_every_architecture_and_operator() -> None:
    got = _run(claims.parity)
    assert [i for i, c in got.items() if c.status != "pass"] == []
    table = got["growth.parity_table"].measured
    assert set(table) == {"minilm (BERT, real)", "gpt2 (random)", "llama gqa untied (random)", "llama tied (random)", "qwen2 bias gqa (random)"}
    assert "depth x2" in table["qwen2 bias gqa (random)"] and "depth x2" not in table["minilm (BERT, real)"]
    assert got["growth.parity.float64"].measured <= 1e-10


def test_article_table_and_inexact_cases() -> None:
    got = _run(claims.article_table) | _run(claims.inexact) | _run(claims.symmetry_and_optimizer)
    assert [i for i, c in got.items() if c.status == "fail"] == []
    bias = got["growth.article_table.second_bias"]
    assert bias.measured["kept"] <= 1e-10 and min(bias.measured["changed"].values()) > 1e-6
    assert got["growth.article_table.ln_eps"].measured["changed"]["gpt2"] > 1e-8
    assert got["growth.inexact.rope_head_dim"].status == "documented"
    assert got["growth.inexact.rope_head_dim"].measured["llama"] > 1e-3
    assert 0 < max(got["growth.inexact.eps_not_scaled"].measured.values()) < 1e-2


@pytest.mark.slow
def test_compute_saved_quick() -> None:
    got = _run(claims.compute_saved)
    assert got["growth.flops_saved"].status == "pass" and got["growth.flops_saved"].measured > 0
    assert "growth.flops_saved_depth" in got
