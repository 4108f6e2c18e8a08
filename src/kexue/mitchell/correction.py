"""Error-corrected Mitchell products: an integer added to the log-domain sum.

Plain Mitchell never overestimates: the product is ``1 + x₁ + x₂`` (or ``2(x₁ + x₂)`` after a
carry) against the exact ``(1 + x₁)(1 + x₂)``, a relative error in ``[−1/9, 0]`` whose mean over
uniform mantissas is about −3.8 %. Adding ``c`` to the mantissa sum (an integer ``c·2^m`` added
to the bit patterns, still no multiplier) shifts that error:

* ``"constant"``: one ``c`` for all operands, chosen so that the mean relative error over
  uniformly distributed mantissas is zero (an unbiased multiplier);
* ``"piecewise"``: REALM-style (Saadat et al., DAC 2018): the mantissa square is cut into
  ``M × M`` segments (``M = 8``, indexed by the top 3 mantissa bits of each operand) and each
  segment gets its own zero-mean ``c``: a 64-entry table lookup and one more addition (formats
  with fewer than 3 mantissa bits use ``M = 2^m``: float8_e5m2 gets a 4 × 4 table);
* ``"lmul"``: the offset of L-Mul (Luo & Sun, "Addition is All You Need for Energy-efficient
  Language Models", arXiv 2410.00907, 2024): ``L-Mul(x, y) = (1 + x₁ + x₂ + 2^(−l(m))) 2^(e₁+e₂)``
  with ``l(m) = m`` for ``m ≤ 3``, ``3`` for ``m = 4`` and ``4`` for ``m > 4``; here the term
  ``2^(−l(m))`` is added to the Mitchell sum, i.e. ``2^(m − l(m))`` to the bit patterns. Unlike
  the paper's real-valued formula, a mantissa sum that reaches 1 carries into the exponent
  (the bit-pattern addition, Mitchell's ``2(x₁ + x₂)`` branch), so it is "Mitchell plus L-Mul's
  offset", not a re-derivation of their hardware.

The constants are computed here (bisection on the mean error, which is increasing in ``c``)
and rounded to the format's ``2^-m`` grid, so the realised errors include that rounding; the
claims measure them exhaustively in bfloat16 and float16.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import numpy as np
import torch

from kexue._shared import check_choice
from kexue.mitchell._bits import DTYPES, Parts, torch_binary

__all__ = [
    "CORRECTIONS",
    "SEGMENTS",
    "Correction",
    "best_correction",
    "check_correction",
    "constant_correction",
    "lambda_correction",
    "lmul_correction",
    "parts_correction",
    "piecewise_table",
    "piecewise_values",
    "relative_error",
    "segments_for",
]

Correction = Literal["constant", "piecewise", "lmul"]
CORRECTIONS: tuple[Correction, ...] = get_args(Correction)
SEGMENTS = 8
_GRID = 256  # samples per segment side when solving for c


def check_correction(correction: Correction | None) -> None:
    """``None`` (plain Mitchell) or one of ``CORRECTIONS``; a ValueError naming the value otherwise.

    Args:
        correction: the value to check.
    """
    if correction is not None:
        check_choice("correction", correction, CORRECTIONS)


def relative_error(x1: np.ndarray, x2: np.ndarray, c: float = 0.0) -> np.ndarray:
    """``(approx − exact) / exact`` of the (corrected) Mitchell product of mantissas ``x₁, x₂``
    (the exponents cancel). ``c`` is the real-valued correction added to the mantissa sum."""
    s = x1 + x2 + c
    approx = np.where(s < 1, 1 + s, 2 * s)  # a carry doubles: 2^(n+1) (1 + (s - 1))
    return approx / ((1 + x1) * (1 + x2)) - 1


def _zero_mean_c(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The ``c`` with zero mean relative error, per row of ``x1``, ``x2`` (bisection on the mean,
    which increases with ``c``; all rows at once)."""
    lo, hi = np.zeros(x1.shape[0]), np.full(x1.shape[0], 0.5)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = relative_error(x1, x2, mid[:, None]).mean(axis=1) < 0
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def _cell(i: int, j: int, segments: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(_GRID) + 0.5) / (_GRID * segments)
    x1, x2 = np.meshgrid(i / segments + t, j / segments + t, indexing="ij")
    return x1.ravel(), x2.ravel()


@functools.cache
def constant_correction(mantissa_bits: int) -> int:
    """The zero-mean constant in units of ``2^-m`` for a format with ``m`` mantissa bits."""
    x1, x2 = _cell(0, 0, 1)
    return round(float(_zero_mean_c(x1[None], x2[None])[0]) * (1 << mantissa_bits))


@functools.cache
def _piecewise_real(segments: int) -> np.ndarray:
    cells = [_cell(i, j, segments) for i in range(segments) for j in range(segments)]
    x1, x2 = np.stack([c[0] for c in cells]), np.stack([c[1] for c in cells])
    return _zero_mean_c(x1, x2).reshape(segments, segments)


def segments_for(mantissa_bits: int) -> int:
    """Segments per operand of the piecewise table: ``SEGMENTS``, or ``2^m`` when ``m`` is smaller."""
    return min(SEGMENTS, 1 << mantissa_bits)


def piecewise_table(mantissa_bits: int, segments: int | None = None) -> torch.Tensor:
    """``(M, M)`` int64 table of zero-mean corrections (units of ``2^-m``), indexed by the
    operands' top ``log2 M`` mantissa bits (``M`` defaults to :func:`segments_for`)."""
    return torch.from_numpy(piecewise_values(mantissa_bits, segments))


def piecewise_values(mantissa_bits: int, segments: int | None = None) -> np.ndarray:
    """:func:`piecewise_table` as a NumPy int64 array (for the compiled kernel: no tensor is read)."""
    segments = segments_for(mantissa_bits) if segments is None else segments
    return np.round(_piecewise_real(segments) * (1 << mantissa_bits)).astype(np.int64)


def lmul_correction(mantissa_bits: int) -> int:
    """L-Mul's offset ``2^(−l(m))`` in units of ``2^-m``: ``2^(m − l(m))``, ``l(m) = m`` (m ≤ 3),
    ``3`` (m = 4), ``4`` (m > 4)."""
    m = mantissa_bits
    level = m if m <= 3 else (3 if m == 4 else 4)
    return 1 << (m - level)


def lambda_correction(kind: Correction, ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor | int:
    """The integer to add to each product's mantissa sum (broadcast shape of ``ta``, ``tb``)."""
    if kind is None:
        raise ValueError("correction=None has no correction term")
    check_correction(kind)
    f = DTYPES[ta.dtype]
    if kind != "piecewise":
        return parts_correction(kind, f.mantissa, None, None)
    ta, tb = torch.broadcast_tensors(ta, tb)
    return parts_correction(kind, f.mantissa, Parts(ta, f).frac, Parts(tb, f).frac)


def parts_correction(
    kind: Correction, mantissa_bits: int, frac_a: torch.Tensor | None, frac_b: torch.Tensor | None
) -> torch.Tensor | int:
    """:func:`lambda_correction` from the operands' stored fractions (int64, broadcasting; unused
    but for ``"piecewise"``). The table is built on their device once and cached there."""
    if kind == "constant":
        return constant_correction(mantissa_bits)
    if kind == "lmul":
        return lmul_correction(mantissa_bits)
    if frac_a is None or frac_b is None:
        raise ValueError('correction="piecewise" needs the operands\' fractions frac_a and frac_b')
    shift = mantissa_bits - int(np.log2(segments_for(mantissa_bits)))
    table = _device_table(mantissa_bits, frac_a.device)
    return table[frac_a >> shift, frac_b >> shift]


@functools.cache
def _device_table(mantissa_bits: int, device: torch.device) -> torch.Tensor:
    """:func:`piecewise_table` on ``device``, copied there once (not per call: a copy is a host sync on a GPU)."""
    return piecewise_table(mantissa_bits).to(device)


def best_correction(grid: int = 1024) -> Correction:
    """The correction with the smallest mean |relative error| of float32 products over a
    ``grid × grid`` lattice of mantissa pairs (``"piecewise"`` here; the claims show the table).

    The products are those of :func:`kexue.mitchell.mul` (its torch path, which the compiled kernel
    equals bit for bit).

    Args:
        grid: lattice points per mantissa.

    Returns:
        One of :data:`CORRECTIONS`.

    Example:
        >>> best_correction(grid=64)
        'piecewise'
    """
    x = torch.arange(grid, dtype=torch.float64) / grid
    x1, x2 = (v.flatten() for v in torch.meshgrid(x, x, indexing="ij"))
    exact = (1 + x1) * (1 + x2)
    a, b = (1 + x1).float(), (1 + x2).float()
    mean = {
        k: float((torch_binary(a, b, "mul", lambda_correction(k, a, b)).double() / exact - 1).abs().mean())
        for k in CORRECTIONS
    }
    return min(CORRECTIONS, key=lambda k: mean[k])
