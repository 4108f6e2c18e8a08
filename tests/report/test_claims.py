from __future__ import annotations

import math

import pytest

from kexue.report.claims import Article, ClaimContext, ClaimSuite, json_value

ARTICLE = Article("t", "https://kexue.fm/archives/0")


def test_claim_status_and_id() -> None:
    ctx = ClaimContext("orthogonal", ARTICLE)
    assert ctx.claim("a.b", "s", article_value=1, measured=1.0, passed=True).status == "pass"
    assert ctx.claim("a.c", "s", article_value=1, measured=2.0, passed=False).status == "fail"
    documented = ctx.claim("a.d", "s", article_value=None, measured=3.0, documented=True)
    assert documented.status == "documented" and documented.id == "orthogonal.a.d"
    assert documented.article == ARTICLE.url
    assert (
        list(ctx.by_id) == ["orthogonal.a.b", "orthogonal.a.c", "orthogonal.a.d"]
        and ctx.by_id["orthogonal.a.d"] is documented
    )


def test_claim_needs_exactly_one_verdict() -> None:
    ctx = ClaimContext("orthogonal", ARTICLE)
    with pytest.raises(ValueError, match="exactly one"):
        ctx.claim("x", "s", article_value=None, measured=1)
    with pytest.raises(ValueError, match="exactly one"):
        ctx.claim("x", "s", article_value=None, measured=1, passed=True, documented=True)


def test_values_become_strict_json() -> None:
    import numpy as np
    import torch

    assert json_value(np.float64(0.5)) == 0.5 and type(json_value(np.float64(0.5))) is float
    assert json_value(torch.tensor(3)) == 3
    assert json_value(float("nan")) == "nan" and json_value(np.float32(math.inf)) == "inf"
    assert json_value({"a": np.int64(2), 3: [np.float32(1.5)]}) == {"a": 2, "3": [1.5]}


def test_crashing_check_becomes_a_failed_claim() -> None:
    suite = ClaimSuite("orthogonal", ARTICLE)

    @suite.check
    def broken(ctx: ClaimContext) -> None:
        raise RuntimeError("boom")

    ctx = ClaimContext("orthogonal", ARTICLE)
    suite.run_check(broken, ctx)
    (claim,) = ctx.claims
    assert claim.id == "orthogonal.broken.error" and claim.status == "fail"
    assert "RuntimeError: boom" in claim.measured and "Traceback" in claim.details
    with pytest.raises(RuntimeError):
        suite.run_check(broken, ClaimContext("orthogonal", ARTICLE), debug=True)
