"""Triton kernels for the rotary position embedding on CUDA: one read and one write of ``x``.

The rotation of :func:`kexue.positional.rope.apply_rotary`, fused: for pair ``j`` = ``(a, b)`` of the first
``R = 2 · cos.shape[-1]`` coordinates, ``(a, b) ↦ (a cos_j − b sin_j, b cos_j + a sin_j)`` (``sin`` negated
for the inverse, which is also the backward), coordinates past ``R`` copied (skipped in place). Both pair
layouts (``"half"``: ``(j, j + R/2)``; ``"interleaved"``: ``(2j, 2j + 1)``), partial rotary, any strides
(transposed ``(B, T, H, D)`` views, stride-0 broadcast tables such as ``(T, R/2)`` or ``(B, 1, T, R/2)``),
``out=`` (in place when ``out`` is ``x``), and queries and keys in one launch (:func:`rotate_many`).

Positions. Tables are either already per row (broadcast to ``x.shape[:-1]``, as ``apply_rotary`` takes
them), or a ``(P, R/2)`` table plus an integer ``positions`` tensor broadcastable to ``x.shape[:-1]``: row
``r`` then reads table row ``positions[r]`` (per-sequence KV-cache offsets without building ``(B, T, R/2)``
tables; the positions are trusted, as in an embedding look-up).

Arithmetic: float32 (float64 for a float64 ``x``) whatever the storage dtype, loads and stores in the
tensors' dtypes (float32, float16, bfloat16, float64; tables of any of them). The products and sums round
exactly as the torch path's separate ``mul``/``sub``/``add`` (the kernels are launched with FP fusion off,
so no FMA contracts them), which makes the results bit-identical to ``rope._rotate_torch`` under the
interpreter; ``round_products`` rounds each product to the storage dtype first (transformers' recipe).
Rounding to bfloat16 is done on the integer pattern (nearest even), because the interpreter's float32 →
bfloat16 cast truncates.

Entry points take CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``) validated by the public
functions: :func:`rotate`, :func:`rotate_many` and the autograd function :class:`TritonRotary`
(:func:`apply`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kexue._optional import require_extra

require_extra(
    "the Triton RoPE kernel (kexue.positional._triton)", "triton"
)  # names the gpu extra before the import fails

import triton
import triton.language as tl

from kexue._triton import collapse

__all__ = ["DTYPES", "TritonRotary", "apply", "compile_cases", "rotate", "rotate_many"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MAX_DIMS = 4
_ELEMENTS_PER_PROGRAM = 1024  # BLOCK_ROWS · D: 8 entries a thread (2048 spill on sm_90: 64-bit addresses)


# --- device functions ---------------------------------------------------------------------------------


@triton.jit
def _widen(value: tl.tensor, COMPUTE: tl.constexpr) -> tl.tensor:
    """``value`` in the compute dtype, exactly (bfloat16 by shifting its bits)."""
    if value.dtype == tl.bfloat16:
        wide = (value.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True).to(COMPUTE)
    else:
        wide = value.to(COMPUTE)
    return wide


@triton.jit
def _narrow(value: tl.tensor, DTYPE: tl.constexpr) -> tl.tensor:
    """Compute-dtype ``value`` rounded to ``DTYPE`` (nearest even; bfloat16 on the float32 bits, NaN → 0x7FC0)."""
    if DTYPE == tl.bfloat16:
        v = value.to(tl.float32)
        b = v.to(tl.int32, bitcast=True)
        rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        rounded = tl.where(v != v, 0x7FC0, rounded)
        out = rounded.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        out = value.to(DTYPE)
    return out


@triton.jit
def _product(
    u: tl.tensor, v: tl.tensor, DTYPE: tl.constexpr, COMPUTE: tl.constexpr, PRODUCTS: tl.constexpr
) -> tl.tensor:
    """``u · v``, rounded to the storage ``DTYPE`` and widened back when ``PRODUCTS``."""
    p = u * v
    if PRODUCTS:
        p = _widen(_narrow(p, DTYPE), COMPUTE)
    return p


@triton.jit
def _row_offsets(
    rows: tl.tensor,
    S1: tl.tensor,
    S2: tl.tensor,
    S3: tl.tensor,
    s0: tl.tensor,
    s1: tl.tensor,
    s2: tl.tensor,
    s3: tl.tensor,
) -> tl.tensor:
    """Offsets of int64 row indices into a 4-D strided index space."""
    i3 = rows % S3
    rest = rows // S3
    i2 = rest % S2
    rest = rest // S2
    return (rest // S1) * s0 + (rest % S1) * s1 + i2 * s2 + i3 * s3


@triton.jit
def _rotate_tile(
    tile: tl.tensor,
    x_ptr: tl.tensor,
    out_ptr: tl.tensor,
    cos_ptr: tl.tensor,
    sin_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    n_rows: tl.tensor,
    S1: tl.tensor,
    S2: tl.tensor,
    S3: tl.tensor,
    xs0: tl.tensor,
    xs1: tl.tensor,
    xs2: tl.tensor,
    xs3: tl.tensor,
    xsd: tl.tensor,
    os0: tl.tensor,
    os1: tl.tensor,
    os2: tl.tensor,
    os3: tl.tensor,
    osd: tl.tensor,
    cs0: tl.tensor,
    cs1: tl.tensor,
    cs2: tl.tensor,
    cs3: tl.tensor,
    csd: tl.tensor,
    cs_row: tl.tensor,
    HALF: tl.constexpr,
    TAIL: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    INVERSE: tl.constexpr,
    PRODUCTS: tl.constexpr,
    POSITIONS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_TAIL: tl.constexpr,
) -> None:
    """Rotate rows ``tile · BLOCK_ROWS …`` of one tensor (``cs*``: the tables' strides, or the positions'
    when ``POSITIONS``, whose table rows are ``cs_row`` apart)."""
    rows = tile.to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_rows
    x_row = _row_offsets(rows, S1, S2, S3, xs0, xs1, xs2, xs3)  # (BLOCK_ROWS,)
    out_row = _row_offsets(rows, S1, S2, S3, os0, os1, os2, os3)
    if POSITIONS:
        where = _row_offsets(rows, S1, S2, S3, cs0, cs1, cs2, cs3)
        cs_row_off = tl.load(pos_ptr + where, mask=row_ok, other=0).to(tl.int64) * cs_row
    else:
        cs_row_off = _row_offsets(rows, S1, S2, S3, cs0, cs1, cs2, cs3)
    j = tl.arange(0, BLOCK_HALF)
    mask = row_ok[:, None] & (j < HALF)[None, :]  # (BLOCK_ROWS, BLOCK_HALF)
    if INTERLEAVED:
        col_a, col_b = 2 * j, 2 * j + 1
    else:
        col_a, col_b = j, j + HALF
    a_ptrs = x_ptr + x_row[:, None] + (col_a * xsd)[None, :]
    b_ptrs = x_ptr + x_row[:, None] + (col_b * xsd)[None, :]
    cs_off = cs_row_off[:, None] + (j * csd)[None, :]
    a = _widen(tl.load(a_ptrs, mask=mask, other=0), COMPUTE)
    b = _widen(tl.load(b_ptrs, mask=mask, other=0), COMPUTE)
    c = _widen(tl.load(cos_ptr + cs_off, mask=mask, other=0), COMPUTE)
    s = _widen(tl.load(sin_ptr + cs_off, mask=mask, other=0), COMPUTE)
    if INVERSE:
        s = -s
    dtype = out_ptr.dtype.element_ty
    first = _product(a, c, dtype, COMPUTE, PRODUCTS) - _product(b, s, dtype, COMPUTE, PRODUCTS)
    second = _product(b, c, dtype, COMPUTE, PRODUCTS) + _product(a, s, dtype, COMPUTE, PRODUCTS)
    tl.store(out_ptr + out_row[:, None] + (col_a * osd)[None, :], _narrow(first, dtype), mask=mask)
    tl.store(out_ptr + out_row[:, None] + (col_b * osd)[None, :], _narrow(second, dtype), mask=mask)
    if TAIL > 0:  # partial rotary, out of place: copy the coordinates past R
        t = 2 * HALF + tl.arange(0, BLOCK_TAIL)
        tail_mask = row_ok[:, None] & (t < 2 * HALF + TAIL)[None, :]
        tail = tl.load(x_ptr + x_row[:, None] + (t * xsd)[None, :], mask=tail_mask, other=0)
        tl.store(out_ptr + out_row[:, None] + (t * osd)[None, :], tail, mask=tail_mask)


@triton.jit
def _rope_kernel(
    x0: tl.tensor,
    out0: tl.tensor,
    cos0: tl.tensor,
    sin0: tl.tensor,
    pos0: tl.tensor,
    rows0: tl.tensor,
    S10: tl.tensor,
    S20: tl.tensor,
    S30: tl.tensor,
    xs00: tl.tensor,
    xs10: tl.tensor,
    xs20: tl.tensor,
    xs30: tl.tensor,
    xsd0: tl.tensor,
    os00: tl.tensor,
    os10: tl.tensor,
    os20: tl.tensor,
    os30: tl.tensor,
    osd0: tl.tensor,
    cs00: tl.tensor,
    cs10: tl.tensor,
    cs20: tl.tensor,
    cs30: tl.tensor,
    csd0: tl.tensor,
    csr0: tl.tensor,
    x1: tl.tensor,
    out1: tl.tensor,
    cos1: tl.tensor,
    sin1: tl.tensor,
    pos1: tl.tensor,
    rows1: tl.tensor,
    S11: tl.tensor,
    S21: tl.tensor,
    S31: tl.tensor,
    xs01: tl.tensor,
    xs11: tl.tensor,
    xs21: tl.tensor,
    xs31: tl.tensor,
    xsd1: tl.tensor,
    os01: tl.tensor,
    os11: tl.tensor,
    os21: tl.tensor,
    os31: tl.tensor,
    osd1: tl.tensor,
    cs01: tl.tensor,
    cs11: tl.tensor,
    cs21: tl.tensor,
    cs31: tl.tensor,
    csd1: tl.tensor,
    csr1: tl.tensor,
    tiles0: tl.tensor,
    HALF: tl.constexpr,
    TAIL0: tl.constexpr,
    TAIL1: tl.constexpr,
    TWO: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    INVERSE: tl.constexpr,
    PRODUCTS: tl.constexpr,
    POSITIONS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_TAIL: tl.constexpr,
) -> None:
    """Rotate one tensor, or two (``TWO``: the first ``tiles0`` programs take tensor 0, the rest tensor 1)."""
    pid = tl.program_id(0)
    # fmt: off
    # one line per role (pointers and rows, x's strides, out's, the tables'): one name per line would run
    # this body past 60 lines without making it clearer
    if pid < tiles0:
        _rotate_tile(
            pid, x0, out0, cos0, sin0, pos0, rows0, S10, S20, S30,
            xs00, xs10, xs20, xs30, xsd0,
            os00, os10, os20, os30, osd0,
            cs00, cs10, cs20, cs30, csd0, csr0,
            HALF, TAIL0, INTERLEAVED, INVERSE, PRODUCTS, POSITIONS, COMPUTE, BLOCK_ROWS, BLOCK_HALF, BLOCK_TAIL,
        )
    elif TWO:
        _rotate_tile(
            pid - tiles0, x1, out1, cos1, sin1, pos1, rows1, S11, S21, S31,
            xs01, xs11, xs21, xs31, xsd1,
            os01, os11, os21, os31, osd1,
            cs01, cs11, cs21, cs31, csd1, csr1,
            HALF, TAIL1, INTERLEAVED, INVERSE, PRODUCTS, POSITIONS, COMPUTE, BLOCK_ROWS, BLOCK_HALF, BLOCK_TAIL,
        )
    # fmt: on


# --- host side ----------------------------------------------------------------------------------------


class _Job:
    """One tensor's kernel arguments: pointers, the collapsed 4-D row space and its strides."""

    def __init__(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, positions: torch.Tensor | None
    ) -> None:
        lead = x.shape[:-1]
        index = positions if positions is not None else cos
        index = index.expand(*lead) if positions is not None else index.expand(*lead, cos.shape[-1])
        shape, (xs, os_, cs) = collapse(lead, [x.stride()[:-1], out.stride()[:-1], index.stride()[: len(lead)]])
        self.copy_back: torch.Tensor | None = None
        if len(shape) > _MAX_DIMS:  # rare: more than 4 leading dimensions that do not merge
            x, index, target = (
                x.contiguous(),
                index.contiguous(),
                torch.empty_like(x, memory_format=torch.contiguous_format),
            )
            if positions is None:
                cos, sin = index, sin.expand_as(index).contiguous()
            else:
                positions = index
            self.copy_back, out = out, target
            shape, (xs, os_, cs) = collapse(lead, [x.stride()[:-1], out.stride()[:-1], index.stride()[: len(lead)]])
        pad = _MAX_DIMS - len(shape)
        self.shape = [1] * pad + shape
        self.x, self.out, self.cos, self.sin = x, out, cos, sin
        self.positions = positions
        self.xs, self.os, self.cs = [0] * pad + xs, [0] * pad + os_, [0] * pad + cs
        self.rows = lead.numel()
        self.in_place = out.data_ptr() == x.data_ptr() and out.stride() == x.stride()
        self.tail = 0 if self.in_place else x.shape[-1] - 2 * cos.shape[-1]

    def args(self) -> list[Any]:
        """The kernel's arguments for this tensor, in ``_rope_kernel``'s order."""
        cs_row = self.cos.stride(0) if self.positions is not None else 0
        return [
            self.x,
            self.out,
            self.cos,
            self.sin,
            self.positions if self.positions is not None else self.cos,
            self.rows,
            *self.shape[1:],
            *self.xs,
            self.x.stride(-1),
            *self.os,
            self.out.stride(-1),
            *self.cs,
            self.cos.stride(-1),
            cs_row,
        ]

    def finish(self) -> None:
        if self.copy_back is not None:
            self.copy_back.copy_(self.out)


def _check_job(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, positions: torch.Tensor | None
) -> None:
    if x.dtype not in DTYPES or out.dtype != x.dtype or out.shape != x.shape:
        raise ValueError(
            f"the Triton rotary kernel takes x and out of one shape and dtype ({DTYPES}); "
            f"got x {x.dtype} {tuple(x.shape)}, out {out.dtype} {tuple(out.shape)}"
        )
    if cos.shape != sin.shape or cos.stride() != sin.stride():
        raise ValueError("cos and sin must share their shape and strides")
    if positions is not None and (positions.is_floating_point() or cos.dim() != 2):
        raise ValueError("positions must be an integer tensor indexing the rows of a (P, R/2) table")


def rotate_many(
    jobs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    interleaved: bool,
    transpose: bool,
    round_products: bool = False,
    positions: Sequence[torch.Tensor | None] | None = None,
    block_rows: int | None = None,
    num_warps: int = 4,
) -> None:
    """Rotate one or two ``(x, cos, sin, out)`` in one kernel launch: ``out = R x`` (``Rᵀ x`` with ``transpose``).

    The argument convention of :func:`kexue.positional._native.rotate_many`, with any strides.

    Args:
        jobs: one or two ``(x, cos, sin, out)``: ``x`` of shape ``(..., D)`` and ``out`` alike (``out`` may be
            ``x``: in place); ``cos``/``sin`` ``(..., R/2)`` broadcastable to ``x.shape[:-1]``, or ``(P, R/2)``
            tables when ``positions`` is given. All share the dtype of ``x`` and ``R``.
        interleaved: pairs ``(2j, 2j + 1)`` instead of ``(j, j + R/2)``.
        transpose: rotate by ``−φ`` (the inverse; the backward of the rotation).
        round_products: round each product to ``x``'s dtype before the sums (transformers' recipe).
        positions: per job ``None`` or an integer tensor broadcastable to ``x.shape[:-1]`` of table rows
            (all ``None`` or all given).
        block_rows: rows per program (a power of two; default: about 2048 pairs per program).
        num_warps: warps per program.
    """
    if not 1 <= len(jobs) <= 2:
        raise ValueError(f"the kernel takes 1 or 2 tensors per launch; got {len(jobs)}")
    positions = list(positions) if positions is not None else [None] * len(jobs)
    if len(positions) != len(jobs) or len({p is None for p in positions}) != 1:
        raise ValueError("positions must be given for every job or for none")
    half, dtype = jobs[0][1].shape[-1], jobs[0][0].dtype
    if any(x.dtype != dtype or c.shape[-1] != half for x, c, _, _ in jobs):
        raise ValueError("tensors rotated in one launch must share their dtype and rotated width")
    for (x, c, s, o), p in zip(jobs, positions, strict=True):
        _check_job(x, c, s, o, p)
    live = [_Job(x, c, s, o, p) for (x, c, s, o), p in zip(jobs, positions, strict=True) if x.numel()]
    if not live:
        return
    _launch(live, half, interleaved, transpose, round_products, positions[0] is not None, block_rows, num_warps)
    for job in live:
        job.finish()


def _launch(
    live: list[_Job],
    half: int,
    interleaved: bool,
    transpose: bool,
    round_products: bool,
    by_position: bool,
    block_rows: int | None,
    num_warps: int,
) -> None:
    block_half = triton.next_power_of_2(half)
    most_rows = max(job.rows for job in live)
    tail = max(job.x.shape[-1] - 2 * half for job in live)
    if block_rows is None:
        block_rows = max(1, min(triton.next_power_of_2(most_rows), _rows_per_program(2 * half + tail)))
    tiles = [triton.cdiv(job.rows, block_rows) for job in live]
    second = live[1] if len(live) == 2 else live[0]
    x = live[0].x
    compute = tl.float64 if x.dtype == torch.float64 else tl.float32
    _rope_kernel[(sum(tiles),)](
        *live[0].args(),
        *second.args(),
        tiles[0],
        HALF=half,
        TAIL0=live[0].tail,
        TAIL1=second.tail,
        TWO=len(live) == 2,
        INTERLEAVED=interleaved,
        INVERSE=transpose,
        PRODUCTS=round_products and x.element_size() == 2,
        POSITIONS=by_position,
        COMPUTE=compute,
        BLOCK_ROWS=block_rows,
        BLOCK_HALF=block_half,
        BLOCK_TAIL=triton.next_power_of_2(max(tail, 1)),
        num_warps=num_warps,
        enable_fp_fusion=False,
    )


def _rows_per_program(width: int) -> int:
    """Rows per program for a head of ``width`` coordinates: about ``_ELEMENTS_PER_PROGRAM`` entries."""
    return max(1, _ELEMENTS_PER_PROGRAM // triton.next_power_of_2(width))


def rotate(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    interleaved: bool = False,
    transpose: bool = False,
    round_products: bool = False,
    positions: torch.Tensor | None = None,
    block_rows: int | None = None,
) -> torch.Tensor:
    """``out = R x`` (``Rᵀ x`` with ``transpose``) in one launch; a new tensor when ``out`` is None.

    Arguments as :func:`rotate_many` for one tensor. Returns ``out``.
    """
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rotate_many(
        [(x, cos, sin, out)],
        interleaved=interleaved,
        transpose=transpose,
        round_products=round_products,
        positions=None if positions is None else [positions],
        block_rows=block_rows,
    )
    return out


def _table_grads(
    x: torch.Tensor, grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂L/∂cos`` and ``∂L/∂sin`` of ``out = (a c − b s', b c + a s')``, ``s' = ±s``, summed to the tables' shapes."""
    half = cos.shape[-1]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    head, g = x[..., : 2 * half].to(dtype), grad[..., : 2 * half].to(dtype)
    if interleaved:
        a, b, ga, gb = head[..., 0::2], head[..., 1::2], g[..., 0::2], g[..., 1::2]
    else:
        a, b, ga, gb = head[..., :half], head[..., half:], g[..., :half], g[..., half:]
    grad_cos = (ga * a + gb * b).sum_to_size(cos.shape).to(cos.dtype)
    grad_sin = (gb * a - ga * b).sum_to_size(sin.shape)
    return grad_cos, (-grad_sin if inverse else grad_sin).to(sin.dtype)


class TritonRotary(torch.autograd.Function):
    """The fused rotation with its exact backward: ``∂x = Rᵀ g`` (the same kernel, ``sin`` negated);
    the tables' gradients in torch (as the CPU kernel's autograd function)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        interleaved: bool,
        inverse: bool,
    ) -> torch.Tensor:
        ctx.interleaved, ctx.inverse = interleaved, inverse
        ctx.save_for_backward(x, cos, sin)
        return rotate(x.detach(), cos.detach(), sin.detach(), interleaved=interleaved, transpose=inverse)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, cos, sin = ctx.saved_tensors
        grad_x = grad_cos = grad_sin = None
        if ctx.needs_input_grad[0]:
            grad_x = rotate(grad, cos, sin, interleaved=ctx.interleaved, transpose=not ctx.inverse)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_cos, grad_sin = _table_grads(x, grad, cos, sin, ctx.interleaved, ctx.inverse)
        return grad_x, grad_cos, grad_sin, None, None


def apply(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False, inverse: bool = False
) -> torch.Tensor:
    """Differentiable ``R x`` (``Rᵀ x`` with ``inverse``) through :class:`TritonRotary`; gradients reach
    ``x``, ``cos`` and ``sin``."""
    return TritonRotary.apply(x, cos, sin, interleaved, inverse)


_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64"}


def compile_cases() -> list[tuple[str, Any, dict[str, str], dict[str, Any], int]]:
    """The configurations built ahead of time by the tests: ``(name, kernel, pointers, constexprs, num_warps)``
    for :func:`kexue._triton.compile_resources`: LLaMA's head (D = R = 128) in bfloat16 for q and k in one
    launch, with transformers' rounding, by position, interleaved partial rotary in float16 and float32."""
    cases: list[tuple[str, Any, dict[str, str], dict[str, Any], int]] = []
    for name, dtype, half, tail, two, interleaved, products, by_position in (
        ("qk_bf16_d128", torch.bfloat16, 64, 0, True, False, True, False),
        ("bf16_d128_positions", torch.bfloat16, 64, 0, False, False, False, True),
        ("fp16_partial_interleaved", torch.float16, 16, 32, False, True, False, False),
        ("fp32_d64_inverse", torch.float32, 32, 0, True, False, False, False),
    ):
        ptr = _POINTER[dtype]
        pointers = {f"{arg}{i}": ptr for arg in ("x", "out") for i in (0, 1)}
        pointers.update({f"{arg}{i}": "*fp32" for arg in ("cos", "sin") for i in (0, 1)})
        pointers.update({f"pos{i}": "*i64" for i in (0, 1)})
        block_half = triton.next_power_of_2(half)
        constexprs = {
            "HALF": half,
            "TAIL0": tail,
            "TAIL1": tail,
            "TWO": two,
            "INTERLEAVED": interleaved,
            "INVERSE": name.endswith("inverse"),
            "PRODUCTS": products,
            "POSITIONS": by_position,
            "COMPUTE": tl.float32,
            "BLOCK_ROWS": _rows_per_program(2 * half + tail),
            "BLOCK_HALF": block_half,
            "BLOCK_TAIL": triton.next_power_of_2(max(tail, 1)),
        }
        cases.append((name, _rope_kernel, pointers, constexprs, 4))
    return cases
