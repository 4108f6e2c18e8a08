"""``kexue reproduce mitchell``: the arithmetic claims in CI, the training runs as slow."""

from __future__ import annotations

import pytest

from kexue.mitchell import claims


def test_arithmetic_claims_pass(run_claims) -> None:
    ctx = run_claims(claims.SUITE, claims.cpp_trick, claims.error_bounds, claims.corrections)
    got = ctx.by_id
    assert [i for i, c in got.items() if c.status != "pass"] == []
    assert got["mitchell.cpp_trick"].measured == 53.68000030517578
    assert got["mitchell.walkthrough_53_625"].measured["k giving 53.625"] == [9]
    bounds = got["mitchell.error_bounds"].measured
    assert bounds["float16"]["pairs"] == 2**20 and tuple(bounds["bfloat16"]["at"]) == (0.5, 0.5)
    assert [f.name for f in ctx.figures] == ["error_contour"]
    corr = got["mitchell.corrections"].measured
    assert corr["piecewise"]["float16"]["max"] < corr["constant"]["float16"]["max"] < corr["plain"]["float16"]["max"]


@pytest.mark.slow
def test_training_claims_quick(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.training).by_id
    assert got["mitchell.digits_mlp"].status == "pass" and got["mitchell.digits_cnn"].status == "pass"
    lm = got["mitchell.char_lm"].measured
    assert lm["exact"] < 3.0 and lm["mitchell"] < 3.0  # both learn (the untrained loss is ln 65 = 4.17)
