"""``kexue reproduce mitchell``: the arithmetic claims in CI, the training runs as slow."""

from __future__ import annotations

import pytest

from kexue.mitchell import claims


def test_arithmetic_claims_pass(run_claims) -> None:
    ctx = run_claims(claims.SUITE, claims.cpp_trick, claims.error_bounds, claims.corrections, claims.float8)
    got = ctx.by_id
    assert [i for i, c in got.items() if c.status != "pass"] == ["mitchell.lmul"]  # documented: no article value
    assert got["mitchell.cpp_trick"].measured == 53.68000030517578
    assert got["mitchell.walkthrough_53_625"].measured["k giving 53.625"] == [9]
    bounds = got["mitchell.error_bounds"].measured
    assert bounds["float16"]["pairs"] == 2**20 and tuple(bounds["bfloat16"]["at"]) == (0.5, 0.5)
    assert [f.name for f in ctx.figures] == ["error_contour"]
    corr = got["mitchell.corrections"].measured
    assert corr["piecewise"]["float16"]["max"] < corr["constant"]["float16"]["max"] < corr["plain"]["float16"]["max"]
    assert corr["lmul"]["float16"]["max"] < corr["plain"]["float16"]["max"] < corr["lmul"]["float8_e4m3fn"]["max"]
    assert got["mitchell.lmul"].status == "documented"
    fp8 = got["mitchell.float8"].measured
    for name in ("float8_e4m3fn", "float8_e5m2"):
        assert fp8[name]["× plain"]["pairs"] == 65536 and fp8[name]["× plain"]["max"] == round(1 / 9, 6)
        assert fp8[name]["× plain"]["most_over"] <= 0 and fp8[name]["÷"]["most_under"] >= 0
    assert fp8["float8_e4m3fn"]["× plain"]["exact_overflows"] > 0  # saturated to ±448, checked by the claim
    assert got["mitchell.bit_exact"].measured["float8_e4m3fn ÷"] == 0


def test_float8_stats_detect_a_wrong_saturation_policy(monkeypatch) -> None:
    """A product that wrapped or went to NaN on overflow (instead of saturating) fails the policy check."""
    import torch

    from kexue.mitchell import ops

    real = ops.mul

    def nan_on_overflow(a, b, **kw):
        out = real(a, b, **kw)
        big = out.float().abs() == 448.0
        return torch.where(big, torch.full_like(out.float(), float("nan")), out.float()).to(out.dtype)

    assert claims.float8_stats(torch.float8_e4m3fn, "mul")["overflows_as_policy"]
    monkeypatch.setattr(claims, "mul", nan_on_overflow)
    assert not claims.float8_stats(torch.float8_e4m3fn, "mul")["overflows_as_policy"]


@pytest.mark.slow
def test_training_claims_quick(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.training).by_id
    assert got["mitchell.digits_mlp"].status == "pass" and got["mitchell.digits_cnn"].status == "pass"
    lm = got["mitchell.char_transformer"].measured
    assert set(lm) == {"exact", "linears", "linears+attention", "linears+attention+correction"}
    assert all(v < 3.7 for v in lm.values())  # all learn (the untrained loss is ln 65 = 4.17)
    errors = got["mitchell.layer_errors"].measured
    assert errors["logits_d"] < errors["logits_c"]  # the correction cuts the end-to-end error
    assert "attention core (QKᵀ, softmax, PV)" in errors["by_kind_c"]
