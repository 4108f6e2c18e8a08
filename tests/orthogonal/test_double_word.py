"""The double-word helpers of kexue.orthogonal.maps against exact (rational / 50-digit) arithmetic."""

from __future__ import annotations

from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import torch

from kexue.orthogonal.maps import _dw_unit, _two_prod, _two_sum


def _random(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n)))


def test_two_sum_and_two_prod_are_error_free() -> None:
    a, b = _random(200, 0), _random(200, 1)
    s, e = _two_sum(a, b)
    p, f = _two_prod(a, b)
    for i in range(200):
        x, y = Fraction(a[i].item()), Fraction(b[i].item())
        assert Fraction(s[i].item()) + Fraction(e[i].item()) == x + y
        assert Fraction(p[i].item()) + Fraction(f[i].item()) == x * y


def test_unit_vector_to_double_word_precision() -> None:
    getcontext().prec = 50
    for seed, d in enumerate((1, 2, 7, 64, 1000)):
        u = _random(d, 10 + seed)
        hi, lo = _dw_unit(u[None])
        norm = sum(Decimal(v) ** 2 for v in u.tolist()).sqrt()
        worst = max(
            abs(Decimal(h) + Decimal(lw) - Decimal(v) / norm)
            for h, lw, v in zip(hi[0].tolist(), lo[0].tolist(), u.tolist(), strict=True)
        )
        assert worst < Decimal("1e-30"), (d, worst)
        # plain float64 normalisation is only good to ~1e-16: the test can tell them apart
        plain = (u / torch.linalg.vector_norm(u)).tolist()
        assert d == 1 or max(
            abs(Decimal(p) - Decimal(v) / norm) for p, v in zip(plain, u.tolist(), strict=True)
        ) > Decimal("1e-20")
