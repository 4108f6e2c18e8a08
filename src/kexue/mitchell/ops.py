"""Element-wise Mitchell arithmetic on tensors (torch, or NumPy arrays in and out).

The vectorised path works in integers on the bit patterns, with the policy of
:mod:`kexue.mitchell.reference` (signs, zeros, infinities, NaN, exact subnormal inputs,
saturation to ±∞, gradual underflow): every entry equals the scalar reference bit for bit
(tested, NaN payloads aside). It runs on any device. Float32 on the CPU goes through the
compiled kernel (:mod:`kexue.mitchell._native`) when it is available, which is tested against
this path.

Formats: float32, float16, bfloat16 (the article's), float64 (for gradient checks), and the two
float8 formats ``float8_e4m3fn`` and ``float8_e5m2`` (policy for e4m3fn's missing infinities in
:mod:`kexue.mitchell.reference`: overflow saturates to ±448, ``x / 0`` and ``log2(0)`` are NaN).
Everything is computed on the integer bit patterns and only viewed as the float dtype at the end,
so the float8 dtypes (which have almost no torch arithmetic) work like the others.

No host sync: special values, subnormal inputs and underflowing results are handled with
``torch.where`` over the whole tensor (never a branch on the data), and the kernel is chosen by
dtype and device only, so a GPU stream never waits for the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kexue.mitchell.reference import FORMATS, Format

__all__ = ["DTYPES", "mitchell_div", "mitchell_exp2", "mitchell_log2", "mitchell_mul"]

DTYPES = {
    torch.float32: FORMATS["float32"],
    torch.float16: FORMATS["float16"],
    torch.bfloat16: FORMATS["bfloat16"],
    torch.float64: FORMATS["float64"],
    torch.float8_e4m3fn: FORMATS["float8_e4m3fn"],
    torch.float8_e5m2: FORMATS["float8_e5m2"],
}
_INT = {8: torch.int8, 16: torch.int16, 32: torch.int32, 64: torch.int64}
_SUPPORTED = "float32, float16, bfloat16, float64, float8_e4m3fn or float8_e5m2"


def _as_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        t, numpy_in = x, False
    else:
        arr = np.asarray(x)
        if arr.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"{name}: NumPy dtype {arr.dtype} is not supported; use float16, float32 or float64")
        t, numpy_in = torch.from_numpy(np.ascontiguousarray(arr)), True
    if t.dtype not in DTYPES:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported; use {_SUPPORTED}")
    return t, numpy_in


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
    ta, na = _as_tensor(a, "a")
    tb, nb = _as_tensor(b, "b")
    if ta.dtype != tb.dtype:
        raise TypeError(f"a and b must have the same dtype, got {ta.dtype} and {tb.dtype}")
    if ta.device != tb.device:
        raise ValueError(f"a and b must be on the same device, got {ta.device} and {tb.device}")
    try:
        torch.broadcast_shapes(ta.shape, tb.shape)
    except RuntimeError:
        raise ValueError(f"a and b must broadcast; got shapes {tuple(ta.shape)} and {tuple(tb.shape)}") from None
    return ta, tb, na or nb


def _back(t: torch.Tensor, numpy_out: bool):
    return t.numpy() if numpy_out else t


class _Parts:
    """Sign, kind masks and Mitchell logarithm ``n + frac/2^m`` (int64 ``n`` and ``frac``) of a tensor.

    Branch-free: subnormal inputs are normalised with ``torch.where`` over the whole tensor, so
    nothing reads a value on the host (no host sync on a GPU)."""

    def __init__(self, t: torch.Tensor, f: Format) -> None:
        signed = t.contiguous().view(_INT[f.bits])
        self.sign = signed < 0
        mag = signed.to(torch.int64) & (f.sign - 1 if f.bits < 64 else torch.iinfo(torch.int64).max)
        self.nan = mag > f.inf if f.has_inf else mag == f.inf  # e4m3fn: S.1111.111 is NaN
        self.inf = mag == f.inf if f.has_inf else torch.zeros_like(self.nan)
        self.zero = mag == 0
        m = f.mantissa
        sub = (mag > 0) & (mag < (1 << m))
        # normalise subnormals: value = 2^(1-bias-m+p) (1 + (mag - 2^p)/2^p), p the top bit (0 <= p < m);
        # the clamp keeps the (discarded) values of the other entries in range
        small = mag.clamp(min=1, max=(1 << m) - 1)
        p = _top_bit(small, m)
        self.n = torch.where(sub, 1 - f.bias - m + p, (mag >> m) - f.bias)
        self.frac = torch.where(sub, (small - (torch.ones_like(p) << p)) << (m - p), mag & ((1 << m) - 1))

    def select(self, index: tuple) -> _Parts:
        """The parts of ``t[index]`` (every field indexed alike)."""
        out = object.__new__(_Parts)
        for name in ("sign", "nan", "inf", "zero", "n", "frac"):
            setattr(out, name, getattr(self, name)[index])
        return out


def _top_bit(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``⌊log₂ x⌋`` of int64 ``1 <= x < 2^bits`` from the exponent field of ``x`` converted to a float
    (exact: float32 holds integers below 2^24, float64 below 2^53)."""
    if bits <= 24:
        return (x.to(torch.float32).view(torch.int32) >> 23).to(torch.int64) - 127
    return (x.to(torch.float64).view(torch.int64) >> 52) - 1023


def _sign_bit(f: Format) -> int:
    """The sign bit as an int64 value (float64's is 2^63, which int64 holds as −2^63)."""
    return f.sign if f.bits < 64 else -f.sign


def _normalise(n: torch.Tensor, frac: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry ``frac`` (any int64) into ``n`` so that ``0 <= frac < 2^m``."""
    return n + (frac >> m), frac & ((1 << m) - 1)


def _compose(sign: torch.Tensor, n: torch.Tensor, frac: torch.Tensor, f: Format) -> torch.Tensor:
    """Bit patterns (int64, sign included) of ``±2^n (1 + frac/2^m)``, saturating to ±∞ (or to
    the largest finite in a format without infinities) and rounding into the subnormals."""
    m = f.mantissa
    e = n + f.bias
    top = (1 << f.exponent) - 1
    mag = (e.clamp(min=0, max=top) << m) | frac
    mag = torch.where((e > top) | (mag > f.max_finite), torch.full_like(frac, f.overflow), mag)
    # results below the normal range round into the subnormals (computed for every entry, kept where e < 1)
    shift = (1 - e).clamp(min=1, max=m + 2)
    significand = (1 << m) + frac
    q = significand >> shift
    r = significand & ((torch.ones_like(shift) << shift) - 1)
    half = torch.ones_like(shift) << (shift - 1)
    q = q + ((r > half) | ((r == half) & (q & 1 == 1))).to(torch.int64)
    q = torch.where(1 - e > m + 1, torch.zeros_like(q), q)
    mag = torch.where(e < 1, q, mag)
    return mag | torch.where(sign, _sign_bit(f), 0)


def _to_float(bits: torch.Tensor, f: Format, dtype: torch.dtype) -> torch.Tensor:
    """View int64 bit patterns (``0 <= bits < 2^width``) as ``dtype``."""
    if f.bits < 64:
        bits = torch.where(bits >= f.sign, bits - (f.sign << 1), bits)  # two's complement of the width
    return bits.to(_INT[f.bits]).view(dtype)


def _combine(pa: _Parts, pb: _Parts, f: Format, op: str, correction: torch.Tensor | int = 0) -> torch.Tensor:
    """Bit patterns (int64) of ``a ⊗ b`` or ``a ⊘ b`` from the operands' parts (broadcasting), with the
    special values of :mod:`kexue.mitchell.reference` chosen by ``torch.where``."""
    sign = pa.sign ^ pb.sign
    if op == "mul":
        n, frac = _normalise(pa.n + pb.n, pa.frac + pb.frac + correction, f.mantissa)
    else:
        n, frac = _normalise(pa.n - pb.n, pa.frac - pb.frac, f.mantissa)
    bits = _compose(sign, n, frac, f)
    signed = torch.where(sign, _sign_bit(f), 0)  # ±0
    if op == "mul":
        bits = torch.where(pa.zero | pb.zero, signed, bits)
        bits = torch.where(pa.inf | pb.inf, signed | f.inf, bits)
        bad = pa.nan | pb.nan | (pa.inf & pb.zero) | (pa.zero & pb.inf)
    else:
        bits = torch.where(pa.zero | pb.inf, signed, bits)
        bits = torch.where(pa.inf | pb.zero, signed | f.inf, bits)
        bad = pa.nan | pb.nan | (pa.inf & pb.inf) | (pa.zero & pb.zero)
        if not f.has_inf:
            bad = bad | pb.zero  # x / 0 has no finite answer: NaN (reference.py's policy)
    return torch.where(bad, f.nan, bits)


def _torch_binary(ta: torch.Tensor, tb: torch.Tensor, op: str, correction: torch.Tensor | int = 0) -> torch.Tensor:
    f = DTYPES[ta.dtype]
    ta, tb = torch.broadcast_tensors(ta, tb)
    return _to_float(_combine(_Parts(ta, f), _Parts(tb, f), f, op, correction), f, ta.dtype)


def mitchell_mul(a: Any, b: Any, *, correction: str | None = None, backend: str = "auto") -> Any:
    """Mitchell product ``a ⊗ b``, element-wise with broadcasting.

    ``|a ⊗ b| = 2^(n_a + n_b) (1 + x_a + x_b)`` (or ``2^(n_a + n_b + 1) (x_a + x_b)`` when the
    mantissas carry): one integer addition of the bit patterns. Never above ``|a b|``, at most
    ``1/9`` below it (at ``x_a = x_b = 1/2``).

    Args:
        a, b: tensors (or NumPy arrays) of one dtype: float32, float16, bfloat16, float64,
            float8_e4m3fn or float8_e5m2.
        correction: ``None`` (plain Mitchell), ``"constant"``, ``"piecewise"`` or ``"lmul"``: an
            error correction added to the integer sum (:mod:`kexue.mitchell.correction`).
        backend: ``"auto"`` (the compiled kernel for float32 on CPU when available, else
            torch), ``"torch"`` or ``"native"``.

    Returns:
        The products, in the inputs' dtype (NumPy in, NumPy out).
    """
    ta, tb, numpy_out = _pair(a, b)
    from kexue.mitchell import _native
    from kexue.mitchell.correction import check_correction, lambda_correction

    _native.check_backend(backend)
    check_correction(correction)
    if _native.use_native(backend, ta, tb):
        return _back(_native.mul(ta, tb, correction), numpy_out)
    corr = 0 if correction is None else lambda_correction(correction, ta, tb)
    return _back(_torch_binary(ta, tb, "mul", corr), numpy_out)


def mitchell_div(a: Any, b: Any) -> Any:
    """Mitchell quotient ``a ⊘ b``: ``λ_a − λ_b``. Never below ``|a/b|``, at most 12.5 % above it
    (exhaustive in float16 and bfloat16). Dtypes and policy as :func:`mitchell_mul`."""
    ta, tb, numpy_out = _pair(a, b)
    return _back(_torch_binary(ta, tb, "div"), numpy_out)


def mitchell_log2(a: Any) -> Any:
    """Mitchell logarithm ``n + x`` of ``a = 2^n (1 + x)``, rounded to the input dtype
    (exact in float64 and wherever it fits); ``−∞`` at ±0 (NaN in float8_e4m3fn, which has no
    ``−∞``), NaN for negative numbers and NaN, ``+∞`` at ``+∞``."""
    t, numpy_out = _as_tensor(a, "a")
    f = DTYPES[t.dtype]
    p = _Parts(t, f)
    value = p.n.to(torch.float64) + p.frac.to(torch.float64) / float(1 << f.mantissa)  # one rounding
    bits = value.to(t.dtype).view(_INT[f.bits]).to(torch.int64) & ((1 << f.bits) - 1 if f.bits < 64 else -1)
    bits = torch.where(p.zero, _sign_bit(f) | f.inf if f.has_inf else f.nan, bits)  # −∞; NaN without infinities
    bits = torch.where(p.inf & ~p.sign, f.inf, bits)
    bits = torch.where(p.nan | (p.sign & ~p.zero), f.nan, bits)
    return _back(_to_float(bits, f, t.dtype), numpy_out)


def mitchell_exp2(y: Any) -> Any:
    """Mitchell antilogarithm ``2^n (1 + x)`` of ``y = n + x`` (``λ = round(y · 2^m)``, ties to
    even), saturating to ``+∞`` and rounding into the subnormals like :func:`mitchell_mul`;
    ``exp2(−∞) = 0``, ``exp2(+∞) = +∞``."""
    t, numpy_out = _as_tensor(y, "y")
    f = DTYPES[t.dtype]
    # beyond [-(bias + m + 2), bias + 2] the result is 0 or ∞ whatever y is: clamp before scaling
    y64 = torch.nan_to_num(t.to(torch.float64), nan=0.0).clamp(-(f.bias + f.mantissa + 2), f.bias + 2)
    lam = torch.round(y64 * float(1 << f.mantissa)).to(torch.int64)  # round: ties to even
    n, frac = _normalise(torch.zeros_like(lam), lam, f.mantissa)
    bits = _compose(torch.zeros_like(lam, dtype=torch.bool), n, frac, f)
    bits = torch.where(torch.isnan(t), f.nan, bits)
    return _back(_to_float(bits, f, t.dtype), numpy_out)
