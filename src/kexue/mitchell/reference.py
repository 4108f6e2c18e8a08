"""Scalar reference for Mitchell arithmetic: Python integers on IEEE bit patterns (``struct``).

Everything the vectorised and native paths compute is defined here, one value at a time, so
they can be tested bit for bit against it.

Representation. A positive finite ``p = 2^n (1 + x)``, ``x ∈ [0, 1)``, has Mitchell logarithm
``n + x``. With ``m`` mantissa bits the library keeps it as the integer ``λ = 2^m (n + x)``; for
a normal number ``λ`` is the magnitude bit pattern minus the pattern of 1.0 (``bias << m``),
which is the article's C++ line ``int(a) + int(b) - 0x3F800000`` rearranged. Products add
``λ``, quotients subtract them; the result ``2^n (1 + f / 2^m)`` is written back.

Policy for the cases the article leaves open (the same in every path):

* sign: the XOR of the operands' signs (also for zeros and infinities);
* NaN in → NaN out; ``0 × ∞``, ``0 / 0`` and ``∞ / ∞`` → NaN; ``x × ∞`` → ±∞,
  ``x × 0`` → ±0, ``x / 0`` → ±∞, ``x / ∞`` → ±0, for finite non-zero ``x``;
* subnormal inputs are taken at their exact value: their Mitchell logarithm is computed after
  normalising (they are not flushed to zero);
* results beyond the largest finite number saturate to ±∞ (as IEEE multiplication does); results
  below the normal range are the Mitchell value ``2^n (1 + f/2^m)`` rounded to the nearest
  subnormal (ties to even), reaching ±0 — gradual underflow, never a wrapped exponent.

Float8. ``float8_e5m2`` (5 exponent bits, 2 mantissa bits, bias 15) is IEEE-like: it has ±∞ and
NaN and follows the policy above unchanged. ``float8_e4m3fn`` (4 exponent bits, 3 mantissa bits,
bias 7; "fn": finite, NaN only) has no infinities: its exponent field 15 holds normal numbers up
to ``S.1111.110 = ±448`` and ``S.1111.111`` is NaN. Its policy:

* results beyond ±448 *saturate to ±448* (the largest finite), as torch's own conversion to
  ``float8_e4m3fn`` does and as the OCP FP8 specification's saturating mode prescribes;
* results that are infinite by definition, not by rounding (``x / 0`` and ``log2(0)``), are
  NaN, the format's only non-finite value (448 would be a silently wrong finite number);
* inputs given as Python floats are rounded into the format like torch's conversion: ties to
  even, ±∞ and overflow to ±448, NaN to NaN.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["FORMATS", "Format", "div", "div_bits", "exp2", "log2", "mul", "mul_bits"]


# struct codes (the float, the same-width unsigned integer) of the formats struct knows; bfloat16
# is the top half of a float32
_STRUCT = {"float32": ("<f", "<I"), "float16": ("<e", "<H"), "float64": ("<d", "<Q")}


@dataclass(frozen=True)
class Format:
    """A binary floating-point format: ``bits`` wide, ``exponent`` exponent bits, ``mantissa``
    stored fraction bits; ``finite`` marks the "fn" layout (no infinities, all-ones is NaN)."""

    name: str
    bits: int  # total width
    mantissa: int  # m
    exponent: int  # exponent field width
    finite: bool = False  # True: no infinities (float8_e4m3fn)

    @property
    def bias(self) -> int:
        return (1 << (self.exponent - 1)) - 1

    @property
    def one(self) -> int:
        return self.bias << self.mantissa

    @property
    def inf(self) -> int:
        """Magnitude pattern of +∞ (IEEE layouts); for a finite format the first NaN pattern."""
        return ((1 << self.exponent) - 1) << self.mantissa if not self.finite else self.sign - 1

    @property
    def has_inf(self) -> bool:
        return not self.finite

    @property
    def max_finite(self) -> int:
        """Magnitude pattern of the largest finite number."""
        return self.inf - 1

    @property
    def overflow(self) -> int:
        """Magnitude pattern a too-large result becomes: +∞, or the largest finite (saturation)."""
        return self.inf if self.has_inf else self.max_finite

    @property
    def nan(self) -> int:
        """The canonical (quiet) NaN pattern."""
        return self.inf | (1 << (self.mantissa - 1)) if self.has_inf else self.sign - 1

    @property
    def sign(self) -> int:
        return 1 << (self.bits - 1)

    def to_bits(self, value: float) -> int:
        """Bit pattern of ``value`` rounded to this format (round to nearest, ties to even)."""
        if self.name in _STRUCT:
            real, integer = _STRUCT[self.name]
            return struct.unpack(integer, struct.pack(real, value))[0]
        # bfloat16, float8: round the float64 value directly (no double rounding)
        if math.isnan(value):
            return self.nan
        sign = self.sign if math.copysign(1.0, value) < 0 else 0
        return sign | self._round_magnitude(Fraction(abs(value))) if not math.isinf(value) else sign | self.overflow

    def from_bits(self, bits: int) -> float:
        if self.name in _STRUCT:
            real, integer = _STRUCT[self.name]
            return struct.unpack(real, struct.pack(integer, bits))[0]
        if self.name == "bfloat16":
            return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
        sign, mag = -1.0 if bits & self.sign else 1.0, bits & (self.sign - 1)
        if mag > self.max_finite:
            return math.nan if mag > self.inf or not self.has_inf else sign * math.inf
        e, frac = mag >> self.mantissa, mag & ((1 << self.mantissa) - 1)
        if e == 0:  # subnormal: 2^(1-bias) (frac / 2^m)
            return sign * math.ldexp(frac, 1 - self.bias - self.mantissa)
        return sign * math.ldexp((1 << self.mantissa) + frac, e - self.bias - self.mantissa)

    def _round_magnitude(self, value: Fraction) -> int:
        """Magnitude bits of the non-negative ``value`` rounded to nearest, ties to even (∞ on overflow)."""
        if value == 0:
            return 0
        m = self.mantissa
        n = math.floor(math.log2(value))  # may be off by one for values near powers of two
        while Fraction(2) ** n > value:
            n -= 1
        while Fraction(2) ** (n + 1) <= value:
            n += 1
        e = max(n, 1 - self.bias)  # subnormals share the smallest exponent
        quantum = Fraction(2) ** (e - m)
        q, r = divmod(value, quantum)
        q = int(q)
        if r * 2 > quantum or (r * 2 == quantum and q % 2 == 1):
            q += 1
        bits = (
            ((e + self.bias - 1) << m) + q if n >= 1 - self.bias else q
        )  # q carries into the exponent when it overflows
        return min(bits, self.overflow) if bits > self.max_finite else bits


FORMATS = {
    f.name: f
    for f in (
        Format("float32", 32, 23, 8),
        Format("float16", 16, 10, 5),
        Format("bfloat16", 16, 7, 8),
        Format("float64", 64, 52, 11),
        Format("float8_e4m3fn", 8, 3, 4, finite=True),
        Format("float8_e5m2", 8, 2, 5),
    )
}


def _fmt(fmt: str | Format) -> Format:
    return fmt if isinstance(fmt, Format) else FORMATS[fmt]


def _classify(f: Format, bits: int) -> tuple[int, str, int]:
    """(sign bit, kind in {'nan', 'inf', 'zero', 'finite'}, λ for finite non-zero)."""
    sign, mag = bits & f.sign, bits & (f.sign - 1)
    if mag > f.inf or (mag == f.inf and not f.has_inf):
        return sign, "nan", 0
    if mag == f.inf:
        return sign, "inf", 0
    if mag == 0:
        return sign, "zero", 0
    m = f.mantissa
    if mag >= 1 << m:  # normal
        return sign, "finite", mag - f.one
    p = mag.bit_length() - 1  # subnormal: value = 2^(1-bias-m+p) (1 + (mag - 2^p)/2^p)
    n = 1 - f.bias - m + p
    return sign, "finite", (n << m) + ((mag - (1 << p)) << (m - p))


def _from_lambda(f: Format, sign: int, lam: int) -> int:
    """Bits of ``sign · 2^n (1 + frac/2^m)`` for ``λ = 2^m n + frac`` with saturation and gradual underflow."""
    m = f.mantissa
    bits = lam + f.one
    if bits > f.max_finite:
        return sign | f.overflow
    if bits >= 1 << m:
        return sign | bits
    n, frac = lam >> m, lam & ((1 << m) - 1)
    shift = 1 - f.bias - n  # >= 1: right-shift of the significand 2^m + frac into the subnormal grid
    significand = (1 << m) + frac
    if shift > m + 1:
        return sign  # below half the smallest subnormal: ±0
    q, r = significand >> shift, significand & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if r > half or (r == half and q & 1):
        q += 1
    return sign | q  # q == 2^m is the smallest normal: the carry is the right bit pattern


def _binary(f: Format, a: int, b: int, op: str) -> int:
    sa, ka, la = _classify(f, a)
    sb, kb, lb = _classify(f, b)
    sign = sa ^ sb
    nan = f.nan
    if "nan" in (ka, kb):
        return nan
    if op == "mul":
        if {ka, kb} == {"inf", "zero"}:
            return nan
        if "inf" in (ka, kb):
            return sign | f.inf
        if "zero" in (ka, kb):
            return sign
        return _from_lambda(f, sign, la + lb)
    if ka == kb and ka in ("inf", "zero"):
        return nan
    if kb == "zero" and not f.has_inf:
        return nan  # x / 0 is infinite by definition: NaN in a format without infinities
    if ka == "inf" or kb == "zero":
        return sign | f.inf
    if ka == "zero" or kb == "inf":
        return sign
    return _from_lambda(f, sign, la - lb)


def mul(a: float, b: float, fmt: str | Format = "float32", correction: int = 0) -> float:
    """Mitchell product of ``a`` and ``b`` (first rounded to ``fmt``), as a Python float.

    ``correction`` is added to ``λ`` (units of ``2^-m``) for finite non-zero products."""
    f = _fmt(fmt)
    return f.from_bits(mul_bits(f.to_bits(a), f.to_bits(b), f, correction))


def mul_bits(a: int, b: int, fmt: str | Format = "float32", correction: int = 0) -> int:
    """:func:`mul` on bit patterns (``correction`` added to ``λ`` of finite non-zero products)."""
    f = _fmt(fmt)
    if correction:
        sa, ka, la = _classify(f, a)
        sb, kb, lb = _classify(f, b)
        if ka == kb == "finite":
            return _from_lambda(f, sa ^ sb, la + lb + correction)
    return _binary(f, a, b, "mul")


def div(a: float, b: float, fmt: str | Format = "float32") -> float:
    """Mitchell quotient ``a / b`` (``λ_a − λ_b``)."""
    f = _fmt(fmt)
    return f.from_bits(div_bits(f.to_bits(a), f.to_bits(b), f))


def div_bits(a: int, b: int, fmt: str | Format = "float32") -> int:
    """:func:`div` on bit patterns."""
    return _binary(_fmt(fmt), a, b, "div")


def log2(a: float, fmt: str | Format = "float32") -> float:
    """Mitchell logarithm ``n + x`` of ``a = 2^n (1 + x)``, rounded to ``fmt``; ``-∞`` at 0, NaN below."""
    f = _fmt(fmt)
    s, kind, lam = _classify(f, f.to_bits(a))
    if kind == "nan" or (s and kind != "zero"):
        return math.nan
    if kind == "zero":
        return -math.inf if f.has_inf else math.nan
    if kind == "inf":
        return math.inf
    return f.from_bits(f._round_magnitude(abs(Fraction(lam, 1 << f.mantissa))) | (f.sign if lam < 0 else 0))


def exp2(y: float, fmt: str | Format = "float32") -> float:
    """Mitchell antilogarithm ``2^n (1 + x)`` of ``y = n + x``: ``λ = round(y 2^m)`` (ties to even), written back."""
    f = _fmt(fmt)
    y = f.from_bits(f.to_bits(y))  # the input is a number of the format
    if math.isnan(y):
        return math.nan
    if math.isinf(y):
        return math.inf if y > 0 else 0.0
    scaled = Fraction(y) * (1 << f.mantissa)
    lam = round(scaled)  # Python's round on a Fraction: ties to even
    limit = 1 << (f.exponent + f.mantissa + 1)  # far beyond both ends: saturates the same way
    lam = max(-limit, min(limit, lam))
    return f.from_bits(_from_lambda(f, 0, lam))
