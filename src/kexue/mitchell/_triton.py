"""Triton kernels for Mitchell arithmetic on CUDA: element-wise ``mul``/``div``/``log2``/``exp2`` and a tiled
``matmul``/``bmm``, bit for bit the torch path of :mod:`kexue.mitchell.ops` and :mod:`kexue.mitchell.matrix`.

Formats: float32, float16 and bfloat16 (float64 and the float8 formats stay on the torch path). Everything
is integer arithmetic on the bit patterns, in int32 (every intermediate of these formats fits: exponents
within ±400, mantissa sums below 2^26), with the policy of :mod:`kexue.mitchell.reference`: signs by XOR,
zeros, infinities and NaN chosen by ``where`` (0 × ∞, 0 / 0, ∞ / ∞ → the canonical quiet NaN), subnormal
inputs at their exact value (normalised through a float32 conversion of the integer, not ``clz``, so the
interpreter runs it too), saturation to ±∞ and round-to-nearest-even into the subnormals. No value is read
on the host, so a call never synchronises.

Matrix product. ``C[i, j] = Σ_k a[i, k] ⊗ b[k, j]``: each program owns a ``BLOCK_M × BLOCK_N`` tile of ``C``
and walks ``k = 0, 1, …, K − 1`` in order, adding the tile of products ``a[:, k] ⊗ b[k, :]`` (in the input
format, then widened exactly) to a float32 accumulator that starts at +0. That is the torch path's order
(one float32 rounding per addition, increasing ``k``, no reassociation, no FMA: the products are integers),
so the results agree bit for bit; the sum rounds once to the input dtype at the end. ``tl.dot`` is never
used (tensor cores cannot produce Mitchell products).

Rounding to bfloat16 (the matrix product's epilogue) is done on the integer pattern (round to nearest
even, NaN → ``0x7FC0`` as torch's CPU conversion), because the interpreter's float32 → bfloat16 cast
truncates; on a GPU it costs four integer operations.

Entry points take CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``), already validated by the
public functions: :func:`mul`, :func:`div`, :func:`log2`, :func:`exp2`, :func:`matmul`, :func:`bmm`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from kexue._optional import require_extra

require_extra(
    "the Triton Mitchell kernels (kexue.mitchell._triton)", "triton"
)  # names the gpu extra before the import fails

import triton
import triton.language as tl

from kexue._triton import collapse
from kexue.mitchell._bits import DTYPES as FORMATS
from kexue.mitchell.correction import (
    Correction,
    constant_correction,
    lmul_correction,
    piecewise_values,
    segments_for,
)

__all__ = ["DTYPES", "bmm", "compile_cases", "div", "exp2", "format_constants", "log2", "matmul", "mul"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # those of kexue.mitchell._bits.DTYPES the kernels take
_BLOCK = 1024  # element-wise: entries per program
_TILE = 64  # matrix product: BLOCK_M = BLOCK_N
_WARPS = 16  # matrix product: 8 entries a thread (4 warps need 255 registers; 8 spill in float16 on sm_90)
_MODES: dict[Correction | None, int] = {None: 0, "constant": 1, "lmul": 1, "piecewise": 2}
_MAX_DIMS = 4
_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


# --- device functions: bit patterns ------------------------------------------------------------------


@triton.jit
def _raw_bits(x: tl.tensor, WIDTH: tl.constexpr) -> tl.tensor:
    """The bit pattern of ``x`` as int32 (sign-extended from 16 bits for the half formats)."""
    raw = x.to(tl.int16, bitcast=True).to(tl.int32) if WIDTH == 16 else x.to(tl.int32, bitcast=True)
    return raw


@triton.jit
def _top_bit(small: tl.tensor) -> tl.tensor:
    """``⌊log₂ small⌋`` of int32 ``1 <= small < 2^24`` from the exponent of its exact float32 value."""
    return (small.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127


@triton.jit
def _parts(
    raw: tl.tensor, WIDTH: tl.constexpr, M: tl.constexpr, BIAS: tl.constexpr, INF: tl.constexpr
) -> tuple[tl.tensor, tl.tensor, tl.tensor, tl.tensor, tl.tensor, tl.tensor]:
    """Sign, NaN, ∞ and zero masks and the Mitchell logarithm ``n + frac / 2^M`` (ops.py's ``_Parts``)."""
    mag = raw & 32767 if WIDTH == 16 else raw & 2147483647
    sign = raw < 0
    nan = mag > INF
    inf = mag == INF
    zero = mag == 0
    sub = (mag > 0) & (mag < (1 << M))
    small = tl.minimum(tl.maximum(mag, 1), (1 << M) - 1)
    p = _top_bit(small)
    one = tl.full(p.shape, 1, tl.int32)
    n = tl.where(sub, 1 - BIAS - M + p, (mag >> M) - BIAS)
    frac = tl.where(sub, (small - (one << p)) << (M - p), mag & ((1 << M) - 1))
    return sign, nan, inf, zero, n, frac


@triton.jit
def _compose(
    sign: tl.tensor,
    n: tl.tensor,
    frac: tl.tensor,
    M: tl.constexpr,
    BIAS: tl.constexpr,
    TOP: tl.constexpr,
    MAXF: tl.constexpr,
    INF: tl.constexpr,
    SIGNBIT: tl.constexpr,
) -> tl.tensor:
    """Bits (int32, sign included) of ``±2^n (1 + frac / 2^M)``, ``0 <= frac < 2^M``: saturating to ±∞,
    rounding to nearest even into the subnormals (ops.py's ``_compose``)."""
    e = n + BIAS
    mag = (tl.minimum(tl.maximum(e, 0), TOP) << M) | frac
    mag = tl.where((e > TOP) | (mag > MAXF), INF, mag)
    shift = tl.minimum(tl.maximum(1 - e, 1), M + 2)
    one = tl.full(shift.shape, 1, tl.int32)
    significand = (1 << M) + frac
    q = significand >> shift
    r = significand & ((one << shift) - 1)
    half = one << (shift - 1)
    q = q + ((r > half) | ((r == half) & ((q & 1) == 1))).to(tl.int32)
    q = tl.where(1 - e > M + 1, 0, q)
    mag = tl.where(e < 1, q, mag)
    return mag | tl.where(sign, SIGNBIT, 0)


@triton.jit
def _combine(
    sa: tl.tensor,
    nana: tl.tensor,
    infa: tl.tensor,
    zeroa: tl.tensor,
    na: tl.tensor,
    fa: tl.tensor,
    sb: tl.tensor,
    nanb: tl.tensor,
    infb: tl.tensor,
    zerob: tl.tensor,
    nb: tl.tensor,
    fb: tl.tensor,
    corr: tl.tensor,
    OP: tl.constexpr,
    M: tl.constexpr,
    BIAS: tl.constexpr,
    TOP: tl.constexpr,
    MAXF: tl.constexpr,
    INF: tl.constexpr,
    NAN: tl.constexpr,
    SIGNBIT: tl.constexpr,
) -> tl.tensor:
    """Bits of ``a ⊗ b`` (``OP == 0``) or ``a ⊘ b`` (``OP == 1``) from the operands' parts (broadcasting),
    with ops.py's special values."""
    sign = sa ^ sb
    if OP == 0:
        s = fa + fb + corr
        n = na + nb + (s >> M)
    else:
        s = fa - fb
        n = na - nb + (s >> M)
    bits = _compose(sign, n, s & ((1 << M) - 1), M, BIAS, TOP, MAXF, INF, SIGNBIT)
    signed = tl.where(sign, SIGNBIT, 0)
    if OP == 0:
        bits = tl.where(zeroa | zerob, signed, bits)
        bits = tl.where(infa | infb, signed | INF, bits)
        bad = nana | nanb | (infa & zerob) | (zeroa & infb)
    else:
        bits = tl.where(zeroa | infb, signed, bits)
        bits = tl.where(infa | zerob, signed | INF, bits)
        bad = nana | nanb | (infa & infb) | (zeroa & zerob)
    return tl.where(bad, NAN, bits)


@triton.jit
def _as_float(bits: tl.tensor, DTYPE: tl.constexpr, WIDTH: tl.constexpr) -> tl.tensor:
    """View int32 bit patterns (the low ``WIDTH`` bits) as ``DTYPE``."""
    value = bits.to(tl.int16).to(DTYPE, bitcast=True) if WIDTH == 16 else bits.to(DTYPE, bitcast=True)
    return value


@triton.jit
def _widen(value: tl.tensor, WIDTH: tl.constexpr, IS_BF16: tl.constexpr) -> tl.tensor:
    """``value`` as float32, exactly (bfloat16 by shifting its bits: the interpreter's cast is not exact)."""
    if IS_BF16:
        wide = (value.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        wide = value.to(tl.float32)
    return wide


@triton.jit
def _narrow(value: tl.tensor, DTYPE: tl.constexpr, IS_BF16: tl.constexpr) -> tl.tensor:
    """float32 ``value`` rounded to ``DTYPE`` (nearest even; bfloat16 on the bits, NaN → 0x7FC0 as torch)."""
    if IS_BF16:
        b = value.to(tl.int32, bitcast=True)
        rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)
        out = rounded.to(tl.int16).to(DTYPE, bitcast=True)
    else:
        out = value.to(DTYPE)
    return out


@triton.jit
def _offsets(
    idx: tl.tensor,
    S1: tl.tensor,
    S2: tl.tensor,
    S3: tl.tensor,
    s0: tl.tensor,
    s1: tl.tensor,
    s2: tl.tensor,
    s3: tl.tensor,
    FLAT: tl.constexpr,
) -> tl.tensor:
    """Memory offsets of linear indices ``idx`` into a 4-D strided view (``FLAT``: contiguous)."""
    if FLAT:
        off = idx
    else:
        i3 = idx % S3
        rest = idx // S3
        i2 = rest % S2
        rest = rest // S2
        off = (rest // S1) * s0 + (rest % S1) * s1 + i2 * s2 + i3 * s3
    return off


@triton.jit
def _linear(numel: tl.tensor, BLOCK: tl.constexpr, WIDE_INDEX: tl.constexpr) -> tuple[tl.tensor, tl.tensor]:
    """This program's linear indices and their mask (int64 indices where offsets may pass 2^31)."""
    start = tl.program_id(0)
    idx = start.to(tl.int64) * BLOCK + tl.arange(0, BLOCK) if WIDE_INDEX else start * BLOCK + tl.arange(0, BLOCK)
    return idx, idx < numel


# --- kernels ------------------------------------------------------------------------------------------


@triton.jit
def _binary_kernel(
    a_ptr: tl.tensor,
    b_ptr: tl.tensor,
    out_ptr: tl.tensor,
    table_ptr: tl.tensor,
    numel: tl.tensor,
    S1: tl.tensor,
    S2: tl.tensor,
    S3: tl.tensor,
    sa0: tl.tensor,
    sa1: tl.tensor,
    sa2: tl.tensor,
    sa3: tl.tensor,
    sb0: tl.tensor,
    sb1: tl.tensor,
    sb2: tl.tensor,
    sb3: tl.tensor,
    OP: tl.constexpr,
    MODE: tl.constexpr,
    CORR: tl.constexpr,
    SEG_SHIFT: tl.constexpr,
    WIDTH: tl.constexpr,
    M: tl.constexpr,
    BIAS: tl.constexpr,
    TOP: tl.constexpr,
    MAXF: tl.constexpr,
    INF: tl.constexpr,
    NAN: tl.constexpr,
    SIGNBIT: tl.constexpr,
    FLAT: tl.constexpr,
    WIDE_INDEX: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """``out[i] = a[i] ⊗ b[i]`` (``OP`` 0) or ``a[i] ⊘ b[i]`` (``OP`` 1) over a broadcast 4-D index space;
    ``MODE``: 0 no correction, 1 the constant ``CORR``, 2 the 8 × 8 table at ``table_ptr``."""
    idx, mask = _linear(numel, BLOCK, WIDE_INDEX)
    a = tl.load(a_ptr + _offsets(idx, S1, S2, S3, sa0, sa1, sa2, sa3, FLAT), mask=mask, other=0)
    b = tl.load(b_ptr + _offsets(idx, S1, S2, S3, sb0, sb1, sb2, sb3, FLAT), mask=mask, other=0)
    sa, nana, infa, zeroa, na, fa = _parts(_raw_bits(a, WIDTH), WIDTH, M, BIAS, INF)
    sb, nanb, infb, zerob, nb, fb = _parts(_raw_bits(b, WIDTH), WIDTH, M, BIAS, INF)
    corr = tl.load(table_ptr + (fa >> SEG_SHIFT) * 8 + (fb >> SEG_SHIFT), mask=mask, other=0) if MODE == 2 else CORR
    bits = _combine(
        sa, nana, infa, zeroa, na, fa, sb, nanb, infb, zerob, nb, fb, corr, OP, M, BIAS, TOP, MAXF, INF, NAN, SIGNBIT
    )
    tl.store(out_ptr + idx, _as_float(bits, out_ptr.dtype.element_ty, WIDTH), mask=mask)


@triton.jit
def _log2_kernel(
    x_ptr: tl.tensor,
    out_ptr: tl.tensor,
    numel: tl.tensor,
    WIDTH: tl.constexpr,
    M: tl.constexpr,
    BIAS: tl.constexpr,
    INF: tl.constexpr,
    NAN: tl.constexpr,
    SIGNBIT: tl.constexpr,
    IS_BF16: tl.constexpr,
    WIDE_INDEX: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """``out = n + frac / 2^M`` rounded once to the dtype; −∞ at ±0, +∞ at +∞, NaN at NaN and below 0."""
    idx, mask = _linear(numel, BLOCK, WIDE_INDEX)
    x = tl.load(x_ptr + idx, mask=mask, other=0)
    sign, nan, inf, zero, n, frac = _parts(_raw_bits(x, WIDTH), WIDTH, M, BIAS, INF)
    # n · 2^M + frac fits 31 bits: its float32 conversion is the one rounding (float32), or exact (16-bit)
    value = (n * (1 << M) + frac).to(tl.float32) * (1.0 / (1 << M))
    bits = _raw_bits(_narrow(value, out_ptr.dtype.element_ty, IS_BF16), WIDTH)
    bits = tl.where(zero, SIGNBIT | INF, bits)
    bits = tl.where(inf & ~sign, INF, bits)
    bits = tl.where(nan | (sign & ~zero), NAN, bits)
    tl.store(out_ptr + idx, _as_float(bits, out_ptr.dtype.element_ty, WIDTH), mask=mask)


@triton.jit
def _round_even(v: tl.tensor) -> tl.tensor:
    """float32 integers-in-range ``v`` (|v| < 2^31) rounded to the nearest int32, ties to even."""
    t = v.to(tl.int32)  # toward zero
    r = v - t.to(tl.float32)  # exact
    odd = (t & 1) == 1
    up = (r > 0.5) | ((r == 0.5) & odd)
    down = (r < -0.5) | ((r == -0.5) & odd)
    return t + up.to(tl.int32) - down.to(tl.int32)


@triton.jit
def _exp2_kernel(
    y_ptr: tl.tensor,
    out_ptr: tl.tensor,
    numel: tl.tensor,
    WIDTH: tl.constexpr,
    M: tl.constexpr,
    BIAS: tl.constexpr,
    TOP: tl.constexpr,
    MAXF: tl.constexpr,
    INF: tl.constexpr,
    NAN: tl.constexpr,
    SIGNBIT: tl.constexpr,
    IS_BF16: tl.constexpr,
    WIDE_INDEX: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """``out = 2^n (1 + frac / 2^M)`` with ``n · 2^M + frac = round(y · 2^M)`` (ties to even); NaN → NaN."""
    idx, mask = _linear(numel, BLOCK, WIDE_INDEX)
    y = _widen(tl.load(y_ptr + idx, mask=mask, other=0), WIDTH, IS_BF16)
    clamped = tl.minimum(tl.maximum(tl.where(y != y, 0.0, y), -(BIAS + M + 2.0)), BIAS + 2.0)
    lam = _round_even(clamped * (1 << M))  # exact product: a power of two
    positive = tl.full(lam.shape, 0, tl.int1)  # 2^λ has no sign
    bits = _compose(positive, lam >> M, lam & ((1 << M) - 1), M, BIAS, TOP, MAXF, INF, SIGNBIT)
    bits = tl.where(y != y, NAN, bits)
    tl.store(out_ptr + idx, _as_float(bits, out_ptr.dtype.element_ty, WIDTH), mask=mask)


@triton.jit
def _matmul_kernel(
    a_ptr: tl.tensor,
    b_ptr: tl.tensor,
    c_ptr: tl.tensor,
    table_ptr: tl.tensor,
    M_ROWS: tl.tensor,
    N_COLS: tl.tensor,
    K: tl.tensor,
    sab: tl.tensor,
    sam: tl.tensor,
    sak: tl.tensor,
    sbb: tl.tensor,
    sbk: tl.tensor,
    sbn: tl.tensor,
    scb: tl.tensor,
    scm: tl.tensor,
    scn: tl.tensor,
    MODE: tl.constexpr,
    CORR: tl.constexpr,
    SEG_SHIFT: tl.constexpr,
    WIDTH: tl.constexpr,
    M: tl.constexpr,
    BIAS: tl.constexpr,
    TOP: tl.constexpr,
    MAXF: tl.constexpr,
    INF: tl.constexpr,
    NAN: tl.constexpr,
    SIGNBIT: tl.constexpr,
    IS_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
) -> None:
    """One ``BLOCK_M × BLOCK_N`` tile of ``C[batch] = Σ_k A[batch, :, k] ⊗ B[batch, k, :]``, float32 sums in
    increasing ``k`` from +0, rounded once to ``C``'s dtype."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    batch = tl.program_id(2).to(tl.int64)
    row_ok, col_ok = rows < M_ROWS, cols < N_COLS
    a_row = a_ptr + batch * sab + rows.to(tl.int64) * sam  # (BLOCK_M,) pointers to a[batch, rows, 0]
    b_col = b_ptr + batch * sbb + cols.to(tl.int64) * sbn  # (BLOCK_N,) pointers to b[batch, 0, cols]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # not tl.zeros: a @jit helper, compiled when triton was imported
    for k in range(K):
        a = tl.load(a_row + k * sak, mask=row_ok, other=0)
        b = tl.load(b_col + k * sbk, mask=col_ok, other=0)
        sa, nana, infa, zeroa, na, fa = _parts(_raw_bits(a, WIDTH), WIDTH, M, BIAS, INF)
        sb, nanb, infb, zerob, nb, fb = _parts(_raw_bits(b, WIDTH), WIDTH, M, BIAS, INF)
        corr = tl.load(table_ptr + (fa >> SEG_SHIFT)[:, None] * 8 + (fb >> SEG_SHIFT)[None, :]) if MODE == 2 else CORR
        bits = _combine(
            sa[:, None],
            nana[:, None],
            infa[:, None],
            zeroa[:, None],
            na[:, None],
            fa[:, None],
            sb[None, :],
            nanb[None, :],
            infb[None, :],
            zerob[None, :],
            nb[None, :],
            fb[None, :],
            corr,
            0,
            M,
            BIAS,
            TOP,
            MAXF,
            INF,
            NAN,
            SIGNBIT,
        )
        acc += _widen(_as_float(bits, a_ptr.dtype.element_ty, WIDTH), WIDTH, IS_BF16)
    c_ptrs = c_ptr + batch * scb + rows.to(tl.int64)[:, None] * scm + cols.to(tl.int64)[None, :] * scn
    tl.store(c_ptrs, _narrow(acc, c_ptr.dtype.element_ty, IS_BF16), mask=row_ok[:, None] & col_ok[None, :])


# --- host side ----------------------------------------------------------------------------------------


@functools.cache
def format_constants(dtype: torch.dtype) -> dict[str, Any]:
    """The kernels' format constexprs for ``dtype`` (int32 patterns; the sign bit as int32)."""
    if dtype not in DTYPES:
        raise TypeError(f"the Triton kernels take float32, float16 or bfloat16; got {dtype}")
    f = FORMATS[dtype]
    return {
        "WIDTH": f.bits,
        "M": f.mantissa,
        "BIAS": f.bias,
        "TOP": (1 << f.exponent) - 1,
        "MAXF": f.max_finite,
        "INF": f.inf,
        "NAN": f.nan,
        "SIGNBIT": f.sign if f.bits < 32 else -f.sign,
    }


def _only(constants: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: constants[k] for k in names}


@functools.cache
def _device_table(mantissa_bits: int, device: torch.device) -> torch.Tensor:
    """The piecewise corrections as an int32 (8 · 8,) table on ``device``, copied there once."""
    return torch.from_numpy(piecewise_values(mantissa_bits).astype("int32").ravel()).to(device)


def _correction_args(
    correction: Correction | None, mantissa_bits: int, device: torch.device
) -> tuple[torch.Tensor | None, dict[str, int]]:
    """``(table, constexprs)`` of a correction (the table pointer is unused but for ``"piecewise"``)."""
    if correction is not None and correction not in _MODES:
        raise ValueError(
            f"correction={correction!r} is not supported; accepted values: None, 'constant', 'piecewise', 'lmul'"
        )
    mode, c, table = _MODES[correction], 0, None
    if correction == "constant":
        c = constant_correction(mantissa_bits)
    elif correction == "lmul":
        c = lmul_correction(mantissa_bits)
    elif correction == "piecewise":
        if segments_for(mantissa_bits) != 8:
            raise ValueError(f"the kernel's piecewise table is 8 x 8; a {mantissa_bits}-bit mantissa has another")
        table = _device_table(mantissa_bits, device)
    return table, {"MODE": mode, "CORR": c, "SEG_SHIFT": max(mantissa_bits - 3, 0)}


def _wide(*tensors: torch.Tensor) -> bool:
    """Whether some offset may pass int32 (then the kernels index in int64)."""
    return any(
        t.numel() > 0 and sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True)) + 1 >= 2**31 - _BLOCK
        for t in tensors
    )


def _strided4(t: torch.Tensor, shape: list[int], strides: list[int]) -> tuple[list[int], list[int]]:
    """Pad a collapsed ``(shape, strides)`` to 4 dimensions at the front."""
    pad = _MAX_DIMS - len(shape)
    return [1] * pad + shape, [0] * pad + strides


def _binary(a: torch.Tensor, b: torch.Tensor, op: int, correction: Correction | None) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a, b)
    constants = format_constants(a.dtype)
    out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    shape, (sa, sb) = collapse(a.shape, [a.stride(), b.stride()])
    if len(shape) > _MAX_DIMS:
        a, b = a.contiguous(), b.contiguous()
        shape, (sa, sb) = [a.numel()], [[1], [1]]
    flat = len(shape) == 1 and sa == [1] and sb == [1]
    shape4, sa4 = _strided4(a, shape, sa)
    _, sb4 = _strided4(b, shape, sb)
    table, corr = _correction_args(correction, constants["M"], a.device)
    grid = (triton.cdiv(out.numel(), _BLOCK),)
    _binary_kernel[grid](
        a,
        b,
        out,
        table if table is not None else out,
        out.numel(),
        shape4[1],
        shape4[2],
        shape4[3],
        *sa4,
        *sb4,
        OP=op,
        **corr,
        **constants,
        FLAT=flat,
        WIDE_INDEX=_wide(a, b, out),
        BLOCK=_BLOCK,
        enable_fp_fusion=False,
    )
    return out


def mul(a: torch.Tensor, b: torch.Tensor, *, correction: Correction | None = None) -> torch.Tensor:
    """Element-wise ``a ⊗ b`` (broadcasting, strided views read in place), as ``ops.mul``'s torch path.

    Args:
        a, b: CUDA tensors (CPU under ``TRITON_INTERPRET=1``) of one dtype: float32, float16 or bfloat16.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.

    Returns:
        A new contiguous tensor of the broadcast shape.
    """
    return _binary(a, b, 0, correction)


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise ``a ⊘ b``, as ``ops.div``'s torch path (arguments as :func:`mul`).

    Args:
        a: the dividend: a CUDA tensor (CPU under ``TRITON_INTERPRET=1``) of float32, float16 or bfloat16.
        b: the divisor, of ``a``'s dtype, broadcastable with it.

    Returns:
        A new contiguous tensor of the broadcast shape.
    """
    return _binary(a, b, 1, None)


def _unary(kernel: Any, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    constants = _only(format_constants(x.dtype), *names)
    grid = (triton.cdiv(x.numel(), _BLOCK),)
    kernel[grid](
        x,
        out,
        x.numel(),
        **constants,
        IS_BF16=x.dtype == torch.bfloat16,
        WIDE_INDEX=_wide(x),
        BLOCK=_BLOCK,
        enable_fp_fusion=False,
    )
    return out


def log2(x: torch.Tensor) -> torch.Tensor:
    """Mitchell logarithm, as ``ops.log2``'s torch path.

    Args:
        x: a CUDA tensor (CPU under ``TRITON_INTERPRET=1``) of float32, float16 or bfloat16.

    Returns:
        A new contiguous tensor of ``x``'s shape and dtype.
    """
    return _unary(_log2_kernel, x, ("WIDTH", "M", "BIAS", "INF", "NAN", "SIGNBIT"))


def exp2(y: torch.Tensor) -> torch.Tensor:
    """Mitchell antilogarithm, as ``ops.exp2``'s torch path.

    Args:
        y: a CUDA tensor (CPU under ``TRITON_INTERPRET=1``) of float32, float16 or bfloat16.

    Returns:
        A new contiguous tensor of ``y``'s shape and dtype.
    """
    return _unary(_exp2_kernel, y, ("WIDTH", "M", "BIAS", "TOP", "MAXF", "INF", "NAN", "SIGNBIT"))


def bmm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    correction: Correction | None = None,
    block: int = _TILE,
    num_warps: int = _WARPS,
) -> torch.Tensor:
    """``(B, M, K) ⊗ (B, K, N)`` → ``(B, M, N)`` in the inputs' dtype, as ``matrix._accumulate`` then ``.to(dtype)``.

    Any strides (stride-0 broadcast batches and transposed views are read in place).

    Args:
        a, b: CUDA tensors (CPU under ``TRITON_INTERPRET=1``) of one dtype: float32, float16 or bfloat16.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
        block: the tile side ``BLOCK_M = BLOCK_N`` (a power of two, at least 16).
        num_warps: warps per program.

    Returns:
        A new contiguous ``(B, M, N)`` tensor.
    """
    batch, m, k = a.shape
    n = b.shape[2]
    constants = format_constants(a.dtype)
    out = torch.empty(batch, m, n, dtype=a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    if k == 0:
        return out.zero_()
    table, corr = _correction_args(correction, constants["M"], a.device)
    grid = (triton.cdiv(m, block), triton.cdiv(n, block), batch)
    _matmul_kernel[grid](
        a,
        b,
        out,
        table if table is not None else out,
        m,
        n,
        k,
        *a.stride(),
        *b.stride(),
        *out.stride(),
        **corr,
        **constants,
        IS_BF16=a.dtype == torch.bfloat16,
        BLOCK_M=block,
        BLOCK_N=block,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return out


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    correction: Correction | None = None,
    block: int = _TILE,
    num_warps: int = _WARPS,
) -> torch.Tensor:
    """``(M, K) ⊗ (K, N)`` → ``(M, N)``, as :func:`bmm` with one batch entry.

    Args:
        a: ``(M, K)``, as :func:`bmm`'s.
        b: ``(K, N)``.
        correction: as :func:`bmm`.
        block: as :func:`bmm`.
        num_warps: as :func:`bmm`.

    Returns:
        A new ``(M, N)`` tensor.
    """
    return bmm(a.unsqueeze(0), b.unsqueeze(0), correction=correction, block=block, num_warps=num_warps)[0]


def _corr_constexprs(correction: Correction | None, mantissa_bits: int) -> dict[str, int]:
    c = 0
    if correction == "constant":
        c = constant_correction(mantissa_bits)
    elif correction == "lmul":
        c = lmul_correction(mantissa_bits)
    return {"MODE": _MODES[correction], "CORR": c, "SEG_SHIFT": max(mantissa_bits - 3, 0)}


def compile_cases() -> list[tuple[str, Any, dict[str, str], dict[str, Any], int]]:
    """The configurations built ahead of time by the tests: ``(name, kernel, pointers, constexprs, num_warps)``
    for :func:`kexue._triton.compile_resources` (the launch defaults, each format and correction mode)."""
    cases: list[tuple[str, Any, dict[str, str], dict[str, Any], int]] = []
    configurations: tuple[tuple[torch.dtype, Correction | None, bool], ...] = (
        (torch.float32, None, True),
        (torch.bfloat16, "piecewise", False),
        (torch.float16, "constant", True),
    )
    for dtype, correction, flat in configurations:
        f, ptr = format_constants(dtype), _POINTER[dtype]
        pointers = {"a_ptr": ptr, "b_ptr": ptr, "out_ptr": ptr, "table_ptr": "*i32"}
        for op in (0, 1):
            constexprs = {
                "OP": op,
                **_corr_constexprs(correction if op == 0 else None, f["M"]),
                **f,
                "FLAT": flat,
                "WIDE_INDEX": False,
                "BLOCK": _BLOCK,
            }
            cases.append(
                (f"{'mul' if op == 0 else 'div'}_{dtype}_{correction}", _binary_kernel, pointers, constexprs, 4)
            )
        bf16 = dtype == torch.bfloat16
        cases.append(
            (
                f"log2_{dtype}",
                _log2_kernel,
                {"x_ptr": ptr, "out_ptr": ptr},
                {
                    **_only(f, "WIDTH", "M", "BIAS", "INF", "NAN", "SIGNBIT"),
                    "IS_BF16": bf16,
                    "WIDE_INDEX": False,
                    "BLOCK": _BLOCK,
                },
                4,
            )
        )
        cases.append(
            (
                f"exp2_{dtype}",
                _exp2_kernel,
                {"y_ptr": ptr, "out_ptr": ptr},
                {
                    **_only(f, "WIDTH", "M", "BIAS", "TOP", "MAXF", "INF", "NAN", "SIGNBIT"),
                    "IS_BF16": bf16,
                    "WIDE_INDEX": False,
                    "BLOCK": _BLOCK,
                },
                4,
            )
        )
        cases.append(
            (
                f"matmul_{dtype}_{correction}",
                _matmul_kernel,
                {"a_ptr": ptr, "b_ptr": ptr, "c_ptr": ptr, "table_ptr": "*i32"},
                {**_corr_constexprs(correction, f["M"]), **f, "IS_BF16": bf16, "BLOCK_M": _TILE, "BLOCK_N": _TILE},
                _WARPS,
            )
        )
    return cases
