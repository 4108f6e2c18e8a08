"""Mitchell arithmetic on bit patterns: the pieces that the element-wise ops, the matrix products, the
corrections, the layers and the kernels' host side share.

A tensor is taken apart into its sign, its kind (zero, ∞, NaN) and its Mitchell logarithm
``n + frac/2^m`` (:class:`Parts`); a product or quotient adds or subtracts the logarithms in int64
(:func:`combine`) and writes the result back as a bit pattern (:func:`compose`), with the policy of
:mod:`kexue.mitchell.reference`. Everything is ``torch.where`` over the whole tensor (never a branch
on the data), so a GPU stream never waits for the host.

This module imports nothing else of :mod:`kexue.mitchell` but the scalar reference's formats, so that
:mod:`~kexue.mitchell.ops`, :mod:`~kexue.mitchell.correction` and :mod:`~kexue.mitchell._native`
can all use it without importing each other.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike

from kexue.mitchell.reference import FORMATS, Format

__all__ = [
    "DTYPES",
    "INT",
    "ArrayOrTensor",
    "BinaryOp",
    "Parts",
    "as_tensor",
    "combine",
    "compose",
    "normalise",
    "pair",
    "restore",
    "sign_bit",
    "to_float",
    "torch_binary",
]

DTYPES: dict[torch.dtype, Format] = {
    torch.float32: FORMATS["float32"],
    torch.float16: FORMATS["float16"],
    torch.bfloat16: FORMATS["bfloat16"],
    torch.float64: FORMATS["float64"],
    torch.float8_e4m3fn: FORMATS["float8_e4m3fn"],
    torch.float8_e5m2: FORMATS["float8_e5m2"],
}
INT = {8: torch.int8, 16: torch.int16, 32: torch.int32, 64: torch.int64}
_SUPPORTED = "float32, float16, bfloat16, float64, float8_e4m3fn or float8_e5m2"

BinaryOp = Literal["mul", "div"]
# what the array functions accept: a tensor, or anything NumPy makes an array of
ArrayOrTensor = torch.Tensor | ArrayLike


def as_tensor(name: str, x: ArrayOrTensor) -> tuple[torch.Tensor, bool]:
    """``x`` as a tensor of a supported dtype, and whether it came from NumPy (the result goes back there).

    Args:
        name: the argument's name, for the TypeError.
        x: a tensor, or a NumPy float16/float32/float64 array (or array-like).

    Returns:
        ``(tensor, numpy_in)``; NumPy input is shared, not copied, where it is contiguous.
    """
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


def pair(a: ArrayOrTensor, b: ArrayOrTensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``a`` and ``b`` as tensors of one dtype on one device with broadcastable shapes (errors name them).

    Returns:
        ``(ta, tb, numpy_out)``: ``numpy_out`` when either came from NumPy.
    """
    ta, na = as_tensor("a", a)
    tb, nb = as_tensor("b", b)
    if ta.dtype != tb.dtype:
        raise TypeError(f"a and b must have the same dtype, got {ta.dtype} and {tb.dtype}")
    if ta.device != tb.device:
        raise ValueError(f"a and b must be on the same device, got {ta.device} and {tb.device}")
    try:
        torch.broadcast_shapes(ta.shape, tb.shape)
    except RuntimeError:
        raise ValueError(f"a and b must broadcast; got shapes {tuple(ta.shape)} and {tuple(tb.shape)}") from None
    return ta, tb, na or nb


def restore(t: torch.Tensor, numpy_out: bool) -> torch.Tensor | np.ndarray:
    """``t`` as a NumPy array when the input was NumPy, else ``t`` itself."""
    return t.numpy() if numpy_out else t


class Parts:
    """Sign, kind masks and Mitchell logarithm ``n + frac/2^m`` (int64 ``n`` and ``frac``) of a tensor.

    Branch-free: subnormal inputs are normalised with ``torch.where`` over the whole tensor, so
    nothing reads a value on the host (no host sync on a GPU).

    Args:
        t: the tensor, of a dtype of :data:`DTYPES`.
        f: its format.
    """

    sign: torch.Tensor
    nan: torch.Tensor
    inf: torch.Tensor
    zero: torch.Tensor
    n: torch.Tensor
    frac: torch.Tensor

    def __init__(self, t: torch.Tensor, f: Format) -> None:
        signed = t.contiguous().view(INT[f.bits])
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

    def select(self, index: tuple[Any, ...]) -> Parts:
        """The parts of ``t[index]`` (every field indexed alike).

        Args:
            index: a tensor index (a tuple of slices, ``...`` and integers).

        Returns:
            A new :class:`Parts`.
        """
        out = object.__new__(Parts)
        for name in ("sign", "nan", "inf", "zero", "n", "frac"):
            setattr(out, name, getattr(self, name)[index])
        return out


def _top_bit(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``⌊log₂ x⌋`` of int64 ``1 <= x < 2^bits`` from the exponent field of ``x`` converted to a float
    (exact: float32 holds integers below 2^24, float64 below 2^53)."""
    if bits <= 24:
        return (x.to(torch.float32).view(torch.int32) >> 23).to(torch.int64) - 127
    return (x.to(torch.float64).view(torch.int64) >> 52) - 1023


def sign_bit(f: Format) -> int:
    """The sign bit as an int64 value (float64's is 2^63, which int64 holds as −2^63)."""
    return f.sign if f.bits < 64 else -f.sign


def normalise(n: torch.Tensor, frac: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry ``frac`` (any int64) into ``n`` so that ``0 <= frac < 2^m``."""
    return n + (frac >> m), frac & ((1 << m) - 1)


def compose(sign: torch.Tensor, n: torch.Tensor, frac: torch.Tensor, f: Format) -> torch.Tensor:
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
    return mag | torch.where(sign, sign_bit(f), 0)


def to_float(bits: torch.Tensor, f: Format, dtype: torch.dtype) -> torch.Tensor:
    """View int64 bit patterns (``0 <= bits < 2^width``) as ``dtype``."""
    if f.bits < 64:
        bits = torch.where(bits >= f.sign, bits - (f.sign << 1), bits)  # two's complement of the width
    return bits.to(INT[f.bits]).view(dtype)


def combine(pa: Parts, pb: Parts, f: Format, op: BinaryOp, correction: torch.Tensor | int = 0) -> torch.Tensor:
    """Bit patterns (int64) of ``a ⊗ b`` or ``a ⊘ b`` from the operands' parts (broadcasting), with the
    special values of :mod:`kexue.mitchell.reference` chosen by ``torch.where``."""
    sign = pa.sign ^ pb.sign
    if op == "mul":
        n, frac = normalise(pa.n + pb.n, pa.frac + pb.frac + correction, f.mantissa)
    else:
        n, frac = normalise(pa.n - pb.n, pa.frac - pb.frac, f.mantissa)
    bits = compose(sign, n, frac, f)
    signed = torch.where(sign, sign_bit(f), 0)  # ±0
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


def torch_binary(ta: torch.Tensor, tb: torch.Tensor, op: BinaryOp, correction: torch.Tensor | int = 0) -> torch.Tensor:
    """``ta ⊗ tb`` or ``ta ⊘ tb`` on the torch path (any device), in the operands' dtype (broadcasting)."""
    f = DTYPES[ta.dtype]
    ta, tb = torch.broadcast_tensors(ta, tb)
    return to_float(combine(Parts(ta, f), Parts(tb, f), f, op, correction), f, ta.dtype)
