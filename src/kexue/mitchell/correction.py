"""Error-corrected Mitchell products: an integer added to the log-domain sum.

Plain Mitchell never overestimates: the product is ``1 + x₁ + x₂`` (or ``2(x₁ + x₂)`` after a
carry) against the exact ``(1 + x₁)(1 + x₂)``, a relative error in ``[−1/9, 0]`` whose mean over
uniform mantissas is about −3.8 %. Adding ``c`` to the mantissa sum (an integer ``c·2^m`` added
to the bit patterns, still no multiplier) shifts that error:

* ``"constant"``: one ``c`` for all operands, chosen so that the mean relative error over
  uniformly distributed mantissas is zero (an unbiased multiplier);
* ``"piecewise"``: REALM-style (Saadat et al., DAC 2018): the mantissa square is cut into
  ``M × M`` segments (``M = 8``, indexed by the top 3 mantissa bits of each operand) and each
  segment gets its own zero-mean ``c``: a 64-entry table lookup and one more addition.

The constants are computed here (bisection on the mean error, which is increasing in ``c``)
and rounded to the format's ``2^-m`` grid, so the realised errors include that rounding; the
claims measure them exhaustively in bfloat16 and float16.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["CORRECTIONS", "SEGMENTS", "check_correction", "constant_correction", "lambda_correction", "piecewise_table",
           "relative_error"]

CORRECTIONS = ("constant", "piecewise")
SEGMENTS = 8
_GRID = 256  # samples per segment side when solving for c


def check_correction(correction: str | None) -> None:
    """``None`` (plain Mitchell) or one of ``CORRECTIONS``; a ValueError naming the value otherwise."""
    if correction is not None:
        from kexue._shared import check_choice

        check_choice("correction", correction, CORRECTIONS)


def relative_error(x1: np.ndarray, x2: np.ndarray, c: float = 0.0) -> np.ndarray:
    """``(approx − exact) / exact`` of the (corrected) Mitchell product of mantissas ``x₁, x₂``
    (the exponents cancel). ``c`` is the real-valued correction added to the mantissa sum."""
    s = x1 + x2 + c
    approx = np.where(s < 1, 1 + s, 2 * s)  # a carry doubles: 2^(n+1) (1 + (s - 1))
    return approx / ((1 + x1) * (1 + x2)) - 1


def _zero_mean_c(x1: np.ndarray, x2: np.ndarray) -> float:
    lo, hi = 0.0, 0.5
    for _ in range(60):
        mid = (lo + hi) / 2
        if relative_error(x1, x2, mid).mean() < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _cell(i: int, j: int, segments: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(_GRID) + 0.5) / (_GRID * segments)
    x1, x2 = np.meshgrid(i / segments + t, j / segments + t, indexing="ij")
    return x1.ravel(), x2.ravel()


@functools.lru_cache(maxsize=None)
def constant_correction(mantissa_bits: int) -> int:
    """The zero-mean constant in units of ``2^-m`` for a format with ``m`` mantissa bits."""
    x1, x2 = _cell(0, 0, 1)
    return int(round(_zero_mean_c(x1, x2) * (1 << mantissa_bits)))


@functools.lru_cache(maxsize=None)
def _piecewise_real(segments: int) -> np.ndarray:
    return np.array([[_zero_mean_c(*_cell(i, j, segments)) for j in range(segments)] for i in range(segments)])


def piecewise_table(mantissa_bits: int, segments: int = SEGMENTS) -> torch.Tensor:
    """``(M, M)`` int64 table of zero-mean corrections (units of ``2^-m``), indexed by the
    operands' top ``log2 M`` mantissa bits."""
    return torch.from_numpy(np.round(_piecewise_real(segments) * (1 << mantissa_bits)).astype(np.int64))


def lambda_correction(kind: str, ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor | int:
    """The integer to add to each product's mantissa sum (broadcast shape of ``ta``, ``tb``)."""
    from kexue.mitchell.ops import DTYPES, _Parts

    if kind is None:
        raise ValueError("correction=None has no correction term")
    check_correction(kind)
    f = DTYPES[ta.dtype]
    if kind == "constant":
        return constant_correction(f.mantissa)
    ta, tb = torch.broadcast_tensors(ta, tb)
    shift = f.mantissa - int(np.log2(SEGMENTS))
    ia, ib = _Parts(ta, f).frac >> shift, _Parts(tb, f).frac >> shift
    table = piecewise_table(f.mantissa).to(ta.device)
    return table[ia, ib]
