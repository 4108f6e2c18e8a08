"""Element-wise Mitchell ops: bit for bit against the scalar struct reference, special values,
the article's worked example, exhaustive error bounds in the 16-bit formats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kexue import mitchell
from kexue.mitchell import reference as ref

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
SPECIAL = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1.0, -1.0, 1.5, 0.75]


def _samples(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """Random bit patterns (every exponent, subnormals included) plus the special values."""
    g = torch.Generator().manual_seed(seed)
    bits = {torch.float32: 32, torch.float64: 64}.get(dtype, 16)
    if bits == 64:
        raw = torch.randint(-(2**62), 2**62, (n,), generator=g) * 2 + torch.randint(0, 2, (n,), generator=g)
        t = raw.view(torch.float64)
    else:
        raw = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (n,), generator=g, dtype=torch.int64)
        t = raw.to({16: torch.int16, 32: torch.int32}[bits]).view(dtype)
    finfo = torch.finfo(dtype)
    extra = [*SPECIAL, finfo.tiny, finfo.tiny / 4, finfo.max, -finfo.max, finfo.smallest_normal * 0.5]
    return torch.cat([t, torch.tensor(extra, dtype=torch.float64).to(dtype)])


def _same(got: torch.Tensor, want: list[float], dtype: torch.dtype) -> None:
    want_t = torch.tensor(want, dtype=torch.float64).to(dtype)
    both_nan = torch.isnan(got) & torch.isnan(want_t)
    bits = {torch.float64: torch.int64, torch.float32: torch.int32}.get(dtype, torch.int16)
    equal = (got.view(bits) == want_t.view(bits)) | both_nan
    bad = (~equal).nonzero().flatten()[:5].tolist()
    assert not bad, [(i, float(got[i]), want[i]) for i in bad]


@pytest.mark.parametrize("name", list(DTYPES))
def test_mul_div_are_bit_exact_against_the_scalar_reference(name: str) -> None:
    dtype = DTYPES[name]
    a, b = _samples(dtype, 3000, 1), _samples(dtype, 3000, 2)
    # also pair every special value with every other
    s = torch.tensor(SPECIAL, dtype=torch.float64).to(dtype)
    a = torch.cat([a, s.repeat_interleave(len(s))])
    b = torch.cat([b, s.repeat(len(s))])
    pa, pb = a.double().tolist(), b.double().tolist()
    _same(mitchell.mul(a, b, backend="torch"), [ref.mul(x, y, name) for x, y in zip(pa, pb, strict=True)], dtype)
    _same(mitchell.div(a, b), [ref.div(x, y, name) for x, y in zip(pa, pb, strict=True)], dtype)


@pytest.mark.parametrize("name", list(DTYPES))
def test_log2_exp2_are_bit_exact_against_the_scalar_reference(name: str) -> None:
    dtype = DTYPES[name]
    a = _samples(dtype, 2000, 3)
    _same(mitchell.log2(a), [ref.log2(x, name) for x in a.double().tolist()], dtype)
    y = torch.cat([_samples(dtype, 1000, 4), torch.linspace(-160, 160, 1001, dtype=torch.float64).to(dtype)])
    _same(mitchell.exp2(y), [ref.exp2(x, name) for x in y.double().tolist()], dtype)


def test_the_articles_worked_example() -> None:
    got = mitchell.mul(torch.tensor([12.3]), torch.tensor([4.56]))
    assert float(got) == 53.68000030517578
    assert abs(float(got) / (12.3 * 4.56) - 1 + 0.0429) < 5e-4  # about 4.29 % below 56.088
    # the C++ line on the bit patterns: int(a) + int(b) - 0x3F800000
    ia, ib = torch.tensor([12.3]).view(torch.int32), torch.tensor([4.56]).view(torch.int32)
    assert torch.equal((ia + ib - 0x3F800000).view(torch.float32), got)


def test_special_values_policy() -> None:
    inf, nan = float("inf"), float("nan")
    a = torch.tensor([0.0, -0.0, inf, -inf, 2.0, -2.0, nan, 1e38, 1e-38])
    b = torch.tensor([5.0, 5.0, 0.0, 3.0, inf, 0.0, 1.0, 1e38, 1e-38])
    got = mitchell.mul(a, b)
    assert got[0].item() == 0 and math.copysign(1, got[0].item()) == 1
    assert got[1].item() == 0 and math.copysign(1, got[1].item()) == -1
    assert math.isnan(got[2].item()) and got[3].item() == -inf and got[4].item() == inf
    assert got[5].item() == 0 and math.copysign(1, got[5].item()) == -1
    assert math.isnan(got[6].item())
    assert got[7].item() == inf  # overflow saturates, never wraps
    assert 0 < got[8].item() < 1e-75 or got[8].item() == 0  # underflow: gradual, to 0 here
    assert got[8].item() == 0.0
    q = mitchell.div(torch.tensor([1.0, 0.0, inf, 1.0, -1.0]), torch.tensor([0.0, 0.0, inf, inf, 0.0]))
    assert (
        q[0].item() == inf
        and math.isnan(q[1].item())
        and math.isnan(q[2].item())
        and q[3].item() == 0
        and q[4].item() == -inf
    )
    assert mitchell.log2(torch.tensor([0.0])).item() == -inf and math.isnan(mitchell.log2(torch.tensor([-1.0])).item())


def test_subnormal_inputs_are_not_flushed() -> None:
    tiny = torch.tensor([2.0**-140], dtype=torch.float32)  # subnormal in float32
    assert mitchell.mul(tiny, torch.tensor([2.0**100])).item() == 2.0**-40
    assert (
        mitchell.mul(torch.tensor([2.0**-20], dtype=torch.float16), torch.tensor([1.5], dtype=torch.float16)).item()
        == 1.5 * 2**-20
    )


def _mantissa_grid(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(1 << m, dtype=torch.float64) / (1 << m)
    x1, x2 = torch.meshgrid(x, x, indexing="ij")
    return x1.flatten(), x2.flatten()


@pytest.mark.parametrize(("name", "m"), [("bfloat16", 7), ("float16", 10)])
def test_exhaustive_error_bounds_in_16_bit_formats(name: str, m: int) -> None:
    dtype = DTYPES[name]
    x1, x2 = _mantissa_grid(m)
    a, b = (1 + x1).to(dtype), (1 + x2).to(dtype)  # every mantissa pair (exponents cancel)
    exact = (1 + x1) * (1 + x2)
    rel = mitchell.mul(a, b).double() / exact - 1
    assert float(rel.max()) <= 0  # never overestimates
    assert float(rel.min()) == pytest.approx(-1 / 9, abs=1e-15)  # exactly 1/9 ...
    worst = int(rel.argmin())
    assert (float(x1[worst]), float(x2[worst])) == (0.5, 0.5)  # ... at (0.5, 0.5)
    q = mitchell.div(a, b).double() / ((1 + x1) / (1 + x2)) - 1
    assert float(q.abs().max()) == pytest.approx(0.125, abs=1e-12) and float(q.min()) >= 0  # never underestimates


def test_numpy_in_numpy_out_and_errors() -> None:
    a = np.array([12.3, 2.0], dtype=np.float32)
    got = mitchell.mul(a, np.float32(4.56))
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got[0] == np.float32(53.68000030517578)
    with pytest.raises(TypeError, match="same dtype"):
        mitchell.mul(torch.ones(2), torch.ones(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="int64"):
        mitchell.mul(torch.ones(2, dtype=torch.int64), torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="backend"):
        mitchell.mul(torch.ones(2), torch.ones(2), backend="cuda")
