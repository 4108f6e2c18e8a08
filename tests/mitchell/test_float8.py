"""Float8 (e4m3fn, e5m2): every operand pair bit for bit against the scalar reference, the
saturation/NaN policy of e4m3fn, and the exhaustive error bounds."""

from __future__ import annotations

import math

import pytest
import torch

from kexue import mitchell
from kexue.mitchell import reference as ref
from kexue.mitchell.correction import constant_correction, lmul_correction, piecewise_table, segments_for

FP8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def _all_pairs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    every = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(dtype)
    return every.repeat_interleave(256), every.repeat(256)


def _bits(t: torch.Tensor) -> list[int]:
    return t.view(torch.uint8).tolist()


def _mismatches(got: list[int], want: list[int], f: ref.Format) -> list[tuple[int, int, int]]:
    """Pairs whose bit patterns differ (any NaN equals any NaN)."""
    return [
        (i, g, w)
        for i, (g, w) in enumerate(zip(got, want, strict=True))
        if g != w and not (math.isnan(f.from_bits(g)) and math.isnan(f.from_bits(w)))
    ][:5]


def test_reference_decodes_and_rounds_like_torch() -> None:
    for name, dtype in FP8.items():
        f = ref.FORMATS[name]
        every = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(dtype).double().tolist()
        assert all(x == f.from_bits(i) or (math.isnan(x) and math.isnan(f.from_bits(i))) for i, x in enumerate(every))
        values = [1e9, -1e9, math.inf, -math.inf, 464.0, 480.0, 61440.0, 2.0**-10, 3 * 2.0**-18, 1.3, -0.7]
        assert [f.to_bits(v) for v in values] == _bits(torch.tensor(values, dtype=torch.float64).to(dtype))


def _check_products(name: str, correction: str | None, subset: int | None = None) -> None:
    f, (a, b) = ref.FORMATS[name], _all_pairs(FP8[name])
    if subset is not None:  # a fixed random subset of the 65,536 pairs
        pick = torch.randperm(len(a), generator=torch.Generator().manual_seed(5))[:subset]
        a, b = a[pick], b[pick]
    ia, ib = _bits(a), _bits(b)
    if correction == "piecewise":  # the table indexed by the top bits of each Mitchell mantissa (subnormals normalised)
        table = piecewise_table(f.mantissa).tolist()
        shift = f.mantissa - int(math.log2(segments_for(f.mantissa)))
        top = [(ref._classify(f, x)[2] & ((1 << f.mantissa) - 1)) >> shift for x in range(256)]
        extra = [table[top[x]][top[y]] for x, y in zip(ia, ib, strict=True)]
    else:
        extra = [
            {None: 0, "lmul": lmul_correction(f.mantissa), "constant": constant_correction(f.mantissa)}[correction]
        ] * len(ia)
    want = [ref.mul_bits(x, y, f, c) for x, y, c in zip(ia, ib, extra, strict=True)]
    assert _mismatches(_bits(mitchell.mul(a, b, correction=correction)), want, f) == []


@pytest.mark.parametrize("name", list(FP8))
def test_every_product_is_bit_exact(name: str) -> None:
    _check_products(name, None)


@pytest.mark.parametrize("name", list(FP8))
@pytest.mark.parametrize("correction", ["lmul", "piecewise"])
def test_corrected_products_are_bit_exact_on_a_sample(name: str, correction: str) -> None:
    _check_products(name, correction, subset=6000)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FP8))
@pytest.mark.parametrize("correction", ["constant", "lmul", "piecewise"])
def test_every_corrected_product_is_bit_exact(name: str, correction: str) -> None:
    _check_products(name, correction)


@pytest.mark.parametrize("name", list(FP8))
def test_every_quotient_log_and_antilog_is_bit_exact(name: str) -> None:
    f, (a, b) = ref.FORMATS[name], _all_pairs(FP8[name])
    want = [ref.div_bits(x, y, f) for x, y in zip(_bits(a), _bits(b), strict=True)]
    assert _mismatches(_bits(mitchell.div(a, b)), want, f) == []
    every = a[::256]
    values = every.double().tolist()
    assert _mismatches(_bits(mitchell.log2(every)), [f.to_bits(ref.log2(v, f)) for v in values], f) == []
    assert _mismatches(_bits(mitchell.exp2(every)), [f.to_bits(ref.exp2(v, f)) for v in values], f) == []


def test_e4m3fn_saturates_and_has_nan_for_true_infinities() -> None:
    t = lambda *v: torch.tensor(v, dtype=torch.float32).to(torch.float8_e4m3fn)  # noqa: E731
    prod = mitchell.mul(t(256.0, -448.0, 2.0, 0.0), t(4.0, 448.0, 3.0, 448.0)).float().tolist()
    assert prod[:2] == [448.0, -448.0]  # saturated, not wrapped and not NaN
    assert prod[2] == 6.0 and prod[3] == 0.0
    q = mitchell.div(t(1.0, 0.0, 448.0), t(0.0, 0.0, 2.0**-9)).float()
    assert math.isnan(q[0]) and math.isnan(q[1]) and float(q[2]) == 448.0
    assert (
        math.isnan(float(mitchell.log2(t(0.0)).float())) and float(mitchell.log2(t(448.0)).float()) == 9.0
    )  # 8.75 rounded to 3 bits
    assert float(mitchell.exp2(t(20.0)).float()) == 448.0
    # the naive int8 addition of the patterns wraps into NaN/negative numbers on the same overflow
    a, b = t(256.0).view(torch.int8).int(), t(4.0).view(torch.int8).int()
    naive = (a + b - ref.FORMATS["float8_e4m3fn"].one).to(torch.int8).view(torch.float8_e4m3fn).float()
    assert float(naive) != 448.0


def test_e5m2_follows_the_ieee_policy() -> None:
    t = lambda *v: torch.tensor(v, dtype=torch.float32).to(torch.float8_e5m2)  # noqa: E731
    assert mitchell.mul(t(32768.0), t(4.0)).float().tolist() == [math.inf]
    assert mitchell.div(t(-1.0), t(0.0)).float().tolist() == [-math.inf]
    assert mitchell.log2(t(0.0)).float().tolist() == [-math.inf]
    assert mitchell.mul(t(2.0**-14), t(2.0**-2)).float().tolist() == [2.0**-16]  # into the subnormals


@pytest.mark.parametrize("name", list(FP8))
def test_exhaustive_error_bound_is_one_ninth_never_over(name: str) -> None:
    dtype, m = FP8[name], ref.FORMATS[name].mantissa
    x = torch.arange(1 << m, dtype=torch.float64) / (1 << m)
    x1, x2 = (v.flatten() for v in torch.meshgrid(x, x, indexing="ij"))
    rel = mitchell.mul((1 + x1).to(dtype), (1 + x2).to(dtype)).double() / ((1 + x1) * (1 + x2)) - 1
    assert float(rel.max()) <= 0 and float(rel.min()) == pytest.approx(-1 / 9, abs=1e-15)
    worst = int(rel.argmin())
    assert (float(x1[worst]), float(x2[worst])) == (0.5, 0.5)
