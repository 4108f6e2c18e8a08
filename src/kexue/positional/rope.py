"""Rotary position embedding (RoPE) in 1-D, N-D axial and mixed-frequency forms, fast.

Every variant is one formula. A position ``p ∈ ℝⁿ`` (n = 1 for text, 2 for images, 3 for
video) and a frequency matrix ``F ∈ ℝ^{n × R/2}`` give one angle per coordinate pair,
``φ_j = p · F[:, j]``; pair ``j`` of the first ``R`` coordinates of ``x`` is rotated by
``φ_j``:

    (a, b) ↦ (a cos φ_j − b sin φ_j,  b cos φ_j + a sin φ_j).

This is ``R_p x`` with ``R_p = exp(Σ_k p_k B_k)``, where the generators ``B_k`` are
block-diagonal skew-symmetric matrices holding ``F[k, j]`` in pair ``j``'s 2×2 block. They
commute, so ``R_pᵀ R_q = R_{q−p}``: attention scores ``⟨R_p q, R_q k⟩ = qᵀ R_{q−p} k``
depend on relative positions only (the article's relativity). The variants differ only in
``F``:

* 1-D (RoFormer, LLaMA): ``F = [θ_0 … θ_{R/2−1}]`` with ``θ_j = base^{−2j/R}``;
* N-D axial (the article's block solution): axis ``k`` owns a block of ``n_k`` pairs with
  its own ladder ``base^{−j/n_k}``, zeros elsewhere (``split`` chooses the ``n_k``);
* mixed: every pair rotates by ``x θ_{x,j} + y θ_{y,j}`` (dense ``F``, optionally learnable
  and per head; Heo et al. 2024).

Two pair layouts are in use: ``"half"`` pairs ``(j, j + R/2)`` (GPT-NeoX, LLaMA, HF
transformers) and ``"interleaved"`` pairs ``(2j, 2j + 1)`` (RoFormer, Meta's original LLaMA,
GPT-J). :func:`convert_layout` permutes q/k projection weights between them. Coordinates
past ``R`` (partial rotary) pass through unchanged.

On CPU the rotation runs in a fused C kernel (:mod:`kexue.positional._native`), one read
and one write of ``x``; elsewhere, or when no compiler is available, in plain torch.

References:
    Su Jianlin, "Transformer upgrade road 2: rotary position embedding",
    https://kexue.fm/archives/8265; "... 4: 2-D rotary position embedding",
    https://kexue.fm/archives/8397. Su et al., RoFormer, arXiv:2104.09864. Heo et al.,
    Rotary position embedding for vision transformer, arXiv:2403.13298. Chen et al.,
    position interpolation, arXiv:2306.15595; bloc97, NTK-aware scaled RoPE (2023).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Literal, get_args

import torch
from torch import nn

from kexue import _triton as triton_kernels
from kexue._shared import check_choice, check_finite, check_int, check_number
from kexue.positional import _native
from kexue.positional._native import Backend
from kexue.positional.mrope import mrope_frequencies, mrope_layout
from kexue.positional.scaling import rope_parameters_from_config

__all__ = [
    "BACKENDS",
    "FREQUENCIES",
    "LAYOUTS",
    "ROPE_SCALINGS",
    "ROUNDINGS",
    "SCALINGS",
    "Backend",
    "Frequencies",
    "Layout",
    "RotaryEmbedding",
    "Rounding",
    "Scaling",
    "apply_rotary",
    "apply_rotary_qk",
    "axial_frequencies",
    "convert_layout",
    "grid_positions",
    "layout_permutation",
    "mixed_frequencies",
    "rope_frequencies",
]

Layout = Literal["half", "interleaved"]
Rounding = Literal["once", "products"]
Scaling = Literal["none", "linear", "ntk"]
Frequencies = Literal["axial", "mixed"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
ROUNDINGS: tuple[Rounding, ...] = get_args(Rounding)
SCALINGS: tuple[Scaling, ...] = get_args(Scaling)
FREQUENCIES: tuple[Frequencies, ...] = get_args(Frequencies)
BACKENDS: tuple[Backend, ...] = get_args(Backend)
_HALF_TYPES = (torch.bfloat16, torch.float16)


# --- the functional core -------------------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether ``shape`` broadcasts to exactly ``target`` (torch.broadcast_shapes costs ~40 µs a call)."""
    if len(shape) > len(target):
        return False
    return all(s == t or s == 1 for s, t in zip(reversed(shape), reversed(target), strict=False))


def _check_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    """Validate shapes; return the number of rotated pairs ``R/2``."""
    for name, value in (("x", x), ("cos", cos), ("sin", sin)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {value.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (the feature dimension last)")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape; got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.dim() < 1:
        raise ValueError("cos and sin must have a last dimension holding one entry per rotated pair")
    half, dim = cos.shape[-1], x.shape[-1]
    if half == 0 or 2 * half > dim:
        hint = (
            "; this looks like HF's duplicated table: pass cos[..., : cos.shape[-1] // 2]"
            if half == dim and dim % 2 == 0
            else ""
        )
        raise ValueError(
            f"cos.shape[-1]={half} must be between 1 and x.shape[-1] / 2 = {dim / 2:g} "
            f"(one angle per rotated pair){hint}"
        )
    if not _broadcasts_to(cos.shape[:-1], x.shape[:-1]):
        raise ValueError(
            f"cos/sin leading shape {tuple(cos.shape[:-1])} must broadcast to x's leading shape {tuple(x.shape[:-1])}"
        )
    if cos.device != x.device or sin.device != x.device:
        raise ValueError(f"x is on {x.device} but cos/sin are on {cos.device}/{sin.device}")
    return half


def _rounds_products(x: torch.Tensor, rounding: Rounding) -> bool:
    """Whether products round to ``x``'s dtype before the sum (only a half type's storage differs)."""
    return rounding == "products" and x.dtype in _HALF_TYPES


def _rotate_torch(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    inverse: bool,
    round_products: bool = False,
) -> torch.Tensor:
    """The plain-torch path (any device, autograd through every input)."""
    half = cos.shape[-1]
    rotary = 2 * half
    dtype = _compute_dtype(x)
    c, s = cos.to(dtype), sin.to(dtype)
    if inverse:
        s = -s
    head = x[..., :rotary].to(dtype)
    a, b = (head[..., 0::2], head[..., 1::2]) if interleaved else (head[..., :half], head[..., half:])

    def product(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u * v).to(x.dtype).to(dtype) if round_products else u * v

    first, second = product(a, c) - product(b, s), product(b, c) + product(a, s)  # (..., R/2) each
    rotated = torch.stack((first, second), dim=-1).flatten(-2) if interleaved else torch.cat((first, second), dim=-1)
    rotated = rotated.to(x.dtype)
    return rotated if rotary == x.shape[-1] else torch.cat((rotated, x[..., rotary:]), dim=-1)


_Operands = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # (x, cos, sin, out) of one kernel job


def _native_prepare(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None
) -> tuple[_Operands, torch.Tensor]:
    """The kernel's operands for one tensor: ``(x, cos, sin, target)`` and the ``out`` to return.
    ``cos``/``sin`` are already in the compute dtype with a contiguous last dimension."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    shape = (*x.shape[:-1], cos.shape[-1])
    c, s = cos.expand(shape), sin.expand(shape)
    if out is None:
        # plain allocation on purpose: a huge-page hint (kexue._shared.empty_like_fast) made single
        # 64 MB outputs bimodal here (7 ms or 30-80 ms, from direct compaction) where 4 KiB pages
        # cost a steady ~3 ms more
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    target = out if out.stride(-1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    return (x, c, s, target), out


def _native_apply_many(
    items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
    interleaved: bool,
    transpose: bool,
    round_products: bool = False,
) -> list[torch.Tensor]:
    """Rotate each ``(x, cos, sin, out)`` in one kernel call; returns the outputs."""
    jobs: list[_Operands] = []
    outs: list[torch.Tensor] = []
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    tables: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # q and k share theirs: converted once
    for x, cos, sin, out in items:
        key = (id(cos), id(sin))
        if key not in tables:
            dtype = _compute_dtype(x)
            tables[key] = (cos.to(dtype).contiguous(), sin.to(dtype).contiguous())
        cos, sin = tables[key]
        if x.numel() == 0:  # nothing to rotate (and an empty view's strides need not be unit)
            outs.append(out if out is not None else torch.empty(x.shape, dtype=x.dtype, device=x.device))
            continue
        job, out = _native_prepare(x, cos, sin, out)
        jobs.append(job)
        outs.append(out)
        if job[3] is not out:  # the kernel wrote a contiguous stand-in for a strided out=
            copies.append((out, job[3]))
    if jobs:
        _native.rotate_many(jobs, interleaved=interleaved, transpose=transpose, round_products=round_products)
    for out, target in copies:
        out.copy_(target)
    return outs


def _native_apply(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None, interleaved: bool, transpose: bool
) -> torch.Tensor:
    return _native_apply_many([(x, cos, sin, out)], interleaved, transpose)[0]


class _NativeRotary(torch.autograd.Function):
    """The fused kernel with an exact backward: ∂x = Rᵀ g (the same kernel, sin negated)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, inverse: bool
    ) -> torch.Tensor:
        ctx.interleaved, ctx.inverse = interleaved, inverse
        ctx.save_for_backward(x, cos, sin)
        return _native_apply(x.detach(), cos.detach(), sin.detach(), None, interleaved, inverse)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, cos, sin = ctx.saved_tensors
        grad_x = grad_cos = grad_sin = None
        if ctx.needs_input_grad[0]:
            grad_x = _native_apply(grad, cos, sin, None, ctx.interleaved, not ctx.inverse)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            half = cos.shape[-1]
            dtype = _compute_dtype(x)
            head, g = x[..., : 2 * half].to(dtype), grad[..., : 2 * half].to(dtype)
            if ctx.interleaved:
                a, b, ga, gb = head[..., 0::2], head[..., 1::2], g[..., 0::2], g[..., 1::2]
            else:
                a, b, ga, gb = head[..., :half], head[..., half:], g[..., :half], g[..., half:]
            # out_a = a c − b s', out_b = b c + a s' with s' = ±s
            grad_cos = (ga * a + gb * b).sum_to_size(cos.shape).to(cos.dtype)
            grad_sin = (gb * a - ga * b).sum_to_size(sin.shape)
            grad_sin = (-grad_sin if ctx.inverse else grad_sin).to(sin.dtype)
        return grad_x, grad_cos, grad_sin, None, None


def apply_rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    layout: Layout = "half",
    inverse: bool = False,
    out: torch.Tensor | None = None,
    backend: Backend = "auto",
    rounding: Rounding = "once",
) -> torch.Tensor:
    """Rotate coordinate pairs of ``x`` by precomputed angles: ``R x`` (or ``Rᵀ x``).

    For pair ``j`` = ``(a, b)`` of the first ``R = 2 · cos.shape[-1]`` coordinates:
    ``(a, b) ↦ (a cos_j − b sin_j, b cos_j + a sin_j)``; coordinates past ``R`` are copied.

    Args:
        x: ``(..., D)`` queries or keys, any float dtype (e.g. ``(B, H, T, D)``; transposed
            views are fine).
        cos: ``(..., R/2)``, one entry per rotated pair (not HF's duplicated ``(..., D)``
            table), broadcastable to ``x.shape[:-1]``; e.g. ``(T, R/2)`` for all batches and
            heads, or ``(B, 1, T, R/2)`` for per-sequence position ids.
        sin: same shape as ``cos``.
        layout: ``"half"`` pairs ``(j, j + R/2)``; ``"interleaved"`` pairs ``(2j, 2j + 1)``.
        inverse: apply ``Rᵀ = R⁻¹`` (rotate back).
        out: write the result here (``x``'s shape and dtype; ``out=x`` rotates in place).
            Not with autograd.
        backend: ``"native"`` the fused CPU kernel, ``"torch"`` plain torch ops, ``"auto"``
            native where it applies (CPU, compiler available) and torch otherwise.
        rounding: ``"once"``: the sums ``a cos − b sin`` are formed in float32 and round once
            to ``x``'s dtype (the most accurate). ``"products"``: for a bfloat16/float16 ``x``,
            each product first rounds to ``x``'s dtype, as transformers' ``q * cos +
            rotate_half(q) * sin`` evaluated in that dtype does (bit-identical to it, so a
            patched model decodes the same tokens); the same as ``"once"`` for other dtypes.

    Returns:
        Tensor of ``x``'s shape and dtype. The arithmetic is in float32 (float64 for a
        float64 ``x``) whatever the storage dtype, and rounds once on output (see ``rounding``).
        Nothing is read back to the host: shapes are checked, values are not.

    Gradients flow to ``x``, ``cos`` and ``sin`` (so learnable frequencies train).

    Example:
        >>> rope = RotaryEmbedding(64)
        >>> cos, sin = rope.cos_sin(torch.arange(128))      # (128, 32) each
        >>> q = torch.randn(2, 8, 128, 64)
        >>> apply_rotary(q, cos, sin).shape
        torch.Size([2, 8, 128, 64])
    """
    _check_tables(x, cos, sin)
    check_choice("layout", layout, LAYOUTS)
    check_choice("rounding", rounding, ROUNDINGS)
    round_products = _rounds_products(x, rounding)
    triton = _native.use_triton(backend, x, cos, sin)
    use_native = not triton and _native.use_native(backend, x, op="rotate_products" if round_products else "rotate")
    interleaved = layout == "interleaved"
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad)
    _check_out("out", out, "x", x, needs_grad)

    if needs_grad:
        if triton and not round_products:
            try:
                return _triton_module().apply(x, cos, sin, interleaved=interleaved, inverse=inverse)
            except Exception as exc:  # a kernel never breaks a call: one warning, then the torch path
                triton_kernels.failed("rope", exc)
        if use_native and not round_products:
            return _NativeRotary.apply(x, cos, sin, interleaved, inverse)
        return _rotate_torch(x, cos, sin, interleaved, inverse, round_products)
    with torch.no_grad():
        if triton:
            try:
                return _triton_apply_many([(x, cos, sin, out)], interleaved, inverse, round_products)[0]
            except Exception as exc:  # a kernel never breaks a call: one warning, then the torch path
                triton_kernels.failed("rope", exc)
        if use_native:
            return _native_apply_many([(x, cos, sin, out)], interleaved, inverse, round_products)[0]
        result = _rotate_torch(x, cos, sin, interleaved, inverse, round_products)
        if out is None:
            return result
        return out.copy_(result)


def _check_out(name: str, out: torch.Tensor | None, of: str, x: torch.Tensor, needs_grad: bool) -> None:
    if out is None:
        return
    if needs_grad:
        raise ValueError(f"{name}= is not supported when gradients are required (as in torch); call without {name}=")
    if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        got = f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must match {of} ({tuple(x.shape)} {x.dtype} on {x.device}); got {got}")


def apply_rotary_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    layout: Layout = "half",
    inverse: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    backend: Backend = "auto",
    rounding: Rounding = "once",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by the same angles in one kernel call: ``(R q, R k)``.

    The same as ``(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin))``, bit for bit, but the
    fused CPU kernel rotates both in one call and one thread team (as flash-attn's
    ``apply_rotary_emb_qkv_`` does on GPU), which halves the fixed cost of a decode step.

    Args:
        q: ``(..., H, T, D)`` queries.
        k: ``(..., H_kv, T, D)`` keys; under grouped-query attention ``H_kv`` divides ``H``, and
            any shape works as long as ``cos``/``sin`` broadcast to both.
        cos, sin: ``(..., R/2)`` tables broadcastable to ``q.shape[:-1]`` and ``k.shape[:-1]``
            (e.g. ``(T, R/2)``, or ``(B, 1, T, R/2)`` for per-sequence positions).
        layout, inverse, backend, rounding: as in :func:`apply_rotary`.
        out: ``(q_out, k_out)`` to write into; ``out=(q, k)`` rotates both in place. Not with
            autograd.

    Returns:
        ``(q_rotated, k_rotated)``. With gradients required, each goes through
        :func:`apply_rotary`'s autograd function (two kernel calls).

    Example:
        >>> q, k = torch.randn(1, 8, 16, 64), torch.randn(1, 2, 16, 64)     # GQA: 8 query heads, 2 kv heads
        >>> cos, sin = RotaryEmbedding(64).cos_sin(torch.arange(16))
        >>> q, k = apply_rotary_qk(q, k, cos, sin, out=(q, k))             # in place
    """
    _check_tables(q, cos, sin)
    _check_tables(k, cos, sin)
    check_choice("layout", layout, LAYOUTS)
    if q.dtype != k.dtype:
        raise ValueError(f"q and k must share a dtype; got {q.dtype} and {k.dtype}")
    if out is not None and (not isinstance(out, (tuple, list)) or len(out) != 2):
        raise ValueError(f"out must be a pair (q_out, k_out); got {type(out).__name__}")
    q_out, k_out = out if out is not None else (None, None)
    needs_grad = torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or cos.requires_grad or sin.requires_grad
    )
    _check_out("out[0]", q_out, "q", q, needs_grad)
    _check_out("out[1]", k_out, "k", k, needs_grad)
    check_choice("rounding", rounding, ROUNDINGS)
    round_products = _rounds_products(q, rounding)
    triton = _native.use_triton(backend, q, k, cos, sin)
    op: _native.Op = "rotate_products" if round_products else "rotate"
    options: dict[str, Any] = {"layout": layout, "inverse": inverse, "backend": backend, "rounding": rounding}
    if needs_grad or not (triton or _native.use_native(backend, q, k, op=op)):
        return apply_rotary(q, cos, sin, out=q_out, **options), apply_rotary(k, cos, sin, out=k_out, **options)
    jobs = [(q, cos, sin, q_out), (k, cos, sin, k_out)]
    with torch.no_grad():
        if not triton:
            rq, rk = _native_apply_many(jobs, layout == "interleaved", inverse, round_products)
            return rq, rk
        try:
            rq, rk = _triton_apply_many(jobs, layout == "interleaved", inverse, round_products)
            return rq, rk
        except Exception as exc:  # a kernel never breaks a call: one warning, then the torch path
            triton_kernels.failed("rope", exc)
    return apply_rotary(q, cos, sin, out=q_out, **options), apply_rotary(k, cos, sin, out=k_out, **options)


def _triton_module() -> ModuleType:
    """:mod:`kexue.positional._triton`, imported on first use on CUDA (it imports triton)."""
    # optional extra: gpu (triton); importing it at module level would import triton with kexue.positional
    from kexue.positional import _triton

    return _triton


def _triton_apply_many(
    jobs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
    interleaved: bool,
    inverse: bool,
    round_products: bool,
) -> list[torch.Tensor]:
    """Rotate each ``(x, cos, sin, out)`` job in one Triton launch (CUDA tensors); new outputs where out is None."""
    outs = [out if out is not None else torch.empty_like(x) for x, _, _, out in jobs]
    _triton_module().rotate_many(
        [(x, cos, sin, out) for (x, cos, sin, _), out in zip(jobs, outs, strict=True)],
        interleaved=interleaved,
        transpose=inverse,
        round_products=round_products,
    )
    return outs


# --- frequencies ---------------------------------------------------------------------------------


def _check_rotary_dim(name: str, value: int) -> int:
    """An even dimension >= 2 (coordinates rotate, and sinusoids come, in pairs)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
        raise ValueError(f"{name}={value!r} must be an even integer >= 2 (coordinates come in pairs)")
    return value


def _check_base(base: float) -> float:
    return check_number("base", base, above=1)


def rope_frequencies(
    rotary_dim: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The 1-D frequency ladder ``θ_j = base^{−2j/R}``, ``j = 0 … R/2 − 1``.

    Computed in float64 on ``device`` (no copy from the host) and rounded once to ``dtype``.

    Args:
        rotary_dim: the rotated width ``R`` (even, at least 2).
        base: the ladder's base (``rope_theta``), above 1.
        dtype: the returned dtype.
        device: where the ladder is made.

    Returns:
        ``(R/2,)`` frequencies, highest first.

    Example:
        >>> rope_frequencies(8).tolist()
        [1.0, 0.1, 0.01, 0.001]
    """
    rotary_dim = _check_rotary_dim("rotary_dim", rotary_dim)
    base = _check_base(base)
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim
    return (base ** (-exponent)).to(dtype)


def _linear_scaling(base: float, factor: float, rotary_dim: int) -> tuple[float, float]:
    """Position interpolation (Chen et al. 2023): positions divided by ``factor``."""
    return base, factor


def _ntk_scaling(base: float, factor: float, rotary_dim: int) -> tuple[float, float]:
    """NTK-aware base change: ``base · factor^{R/(R−2)}`` keeps the highest frequency, stretches the lowest by
    ``factor``.

    With a single pair (``R = 2``) the only frequency is 1, which the base does not move.
    """
    if rotary_dim <= 2:
        return base, 1.0
    return base * factor ** (rotary_dim / (rotary_dim - 2)), 1.0


def _no_scaling(base: float, factor: float, rotary_dim: int) -> tuple[float, float]:
    return base, 1.0


# name -> (base, factor, rotary_dim) -> (effective base, position divisor); its keys are the Scaling names
ROPE_SCALINGS: dict[Scaling, Callable[[float, float, int], tuple[float, float]]] = {
    "none": _no_scaling,
    "linear": _linear_scaling,
    "ntk": _ntk_scaling,
}


def _split(pairs: int, axes: int, split: Sequence[int] | None) -> list[int]:
    if split is None:
        if pairs % axes:
            raise ValueError(
                f"{pairs} rotary pairs do not split evenly over {axes} axes; pass split= with one pair count per axis"
            )
        return [pairs // axes] * axes
    split = list(split)
    if (
        len(split) != axes
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in split)
        or sum(split) != pairs
    ):
        raise ValueError(f"split={split!r} must list {axes} positive pair counts summing to {pairs}")
    return split


def axial_frequencies(
    rotary_dim: int,
    axes: int,
    *,
    base: float = 10000.0,
    split: Sequence[int] | None = None,
    scaling: Scaling = "none",
    factor: float = 1.0,
) -> torch.Tensor:
    """The article's block solution: axis ``k`` rotates its own block of pairs.

    Axis ``k`` owns ``n_k = split[k]`` consecutive pairs (default: an equal share) with the
    1-D ladder of a ``2 n_k``-dimensional RoPE, ``base^{−j/n_k}``; its row of ``F`` is zero
    elsewhere. ``axes=1`` is the 1-D RoPE. Scaling applies per axis.

    Args:
        rotary_dim: the rotated width ``R`` (even).
        axes: position dimensions (1 text, 2 images, 3 video).
        base: each axis's ladder base.
        split: pairs per axis (default: equal shares).
        scaling: a key of :data:`ROPE_SCALINGS`, applied per axis.
        factor: the scaling's length (or resolution) ratio.

    Returns:
        ``F`` of shape ``(axes, R/2)``, float64.

    Example:
        >>> axial_frequencies(8, 2)
        tensor([[1.0000, 0.0100, 0.0000, 0.0000],
                [0.0000, 0.0000, 1.0000, 0.0100]], dtype=torch.float64)
    """
    rotary_dim = _check_rotary_dim("rotary_dim", rotary_dim)
    check_int("axes", axes, 1)
    check_choice("scaling", scaling, SCALINGS)
    scale = ROPE_SCALINGS[scaling]
    check_number("factor", factor, above=0)
    counts = _split(rotary_dim // 2, axes, split)
    freqs = torch.zeros(axes, rotary_dim // 2, dtype=torch.float64)
    start = 0
    for axis, count in enumerate(counts):
        effective_base, divisor = scale(_check_base(base), factor, 2 * count)
        freqs[axis, start : start + count] = rope_frequencies(2 * count, base=effective_base) / divisor
        start += count
    return freqs


def mixed_frequencies(
    rotary_dim: int,
    axes: int,
    *,
    base: float = 100.0,
    num_heads: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mixed frequencies: pair ``j`` rotates by ``p · F[:, j]`` with a dense ``F``.

    Magnitudes follow the 1-D ladder ``base^{−2j/R}``; each pair (per head, if
    ``num_heads``) gets a random direction in ``ℝ^axes`` (RoPE-Mixed's initialisation,
    Heo et al. 2024, with their smaller default base for images). Any two non-parallel
    columns make positions recoverable (invertibility).

    Args:
        rotary_dim: the rotated width ``R`` (even).
        axes: position dimensions.
        base: the magnitudes' ladder base (100: RoPE-Mixed's default for images).
        num_heads: one ``F`` per head when given.
        generator: the random directions' generator.

    Returns:
        ``(axes, R/2)`` or ``(num_heads, axes, R/2)``, float64.

    Example:
        >>> mixed_frequencies(8, 2, num_heads=4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2, 4])
    """
    rotary_dim = _check_rotary_dim("rotary_dim", rotary_dim)
    check_int("axes", axes, 1)
    magnitude = rope_frequencies(rotary_dim, base=base)  # (R/2,)
    heads = 1 if num_heads is None else num_heads
    direction = torch.randn(heads, axes, rotary_dim // 2, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    freqs = direction * magnitude  # (H, axes, R/2)
    return freqs[0] if num_heads is None else freqs


def grid_positions(
    *sizes: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Integer grid coordinates in row-major order, e.g. ``grid_positions(h, w)`` for image patches.

    Args:
        *sizes: the grid's size along each axis (positive).
        dtype: the coordinates' dtype.
        device: where they are made.

    Returns:
        ``(prod(sizes), len(sizes))``: row ``i`` holds the coordinates of token ``i``.

    Example:
        >>> grid_positions(2, 3).tolist()
        [[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0]]
    """
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"sizes={sizes!r} must be one or more positive integers")
    axes = [torch.arange(n, dtype=dtype, device=device) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


# --- the module ----------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """Builds cos/sin tables from positions and rotates queries and keys.

    Angles are computed in ``angle_dtype`` (float32 by default, float64 on request) from
    the positions, whatever the dtype of the tensors being rotated, so bfloat16 models get
    float32-correct angles. For 1-D integer positions the cos/sin table is cached and grown
    as needed (a KV cache's ``offset`` only slices it).

    Devices and precision: the frequencies (and the cached table) keep ``angle_dtype``
    through every cast of the module (``.to(dtype)``, ``.half()``, ``.bfloat16()``,
    ``.double()``, ``model.bfloat16()``: transformers' bug #29285 was a bfloat16 cast of its
    frequencies) and follow it to its device; the angles are formed by elementwise products,
    which autocast leaves in ``angle_dtype``. On the meta device every call returns meta
    tensors of the right shape and dtype; materialising a meta module (``.to_empty(device=...)``)
    recomputes the frequencies from their float64 definition. ``forward(..., validate=False)``
    reads nothing back to the host (see :meth:`forward`).

    Args:
        dim: the head dimension ``D`` of the tensors to rotate.
        rotary_dim: how many leading coordinates rotate (partial rotary, e.g. GPT-NeoX's
            25%); default ``dim``.
        axes: position dimensions: 1 text, 2 images, 3 video.
        frequencies: ``"axial"`` (the article's block solution; 1-D RoPE when ``axes=1``)
            or ``"mixed"`` (dense, each pair rotates by ``p · F[:, j]``).
        split: axial only: pairs per axis (default: equal shares).
        base: the ladder's base (10000 for text; mixed defaults to 100).
        layout: ``"half"`` (LLaMA/HF) or ``"interleaved"`` (RoFormer/GPT-J).
        scaling: ``"none"``, ``"linear"`` (position interpolation) or ``"ntk"``
            (NTK-aware base change), with ``factor`` the length (or resolution) ratio.
        learnable: make ``F`` an ``nn.Parameter`` (gradients reach it through cos/sin).
        num_heads: mixed only: one ``F`` per head (``x`` must then be ``(..., H, T, D)``).
        angle_dtype: float32 or float64.
        backend: passed to :func:`apply_rotary`.
        seed: mixed only: seed of the random directions.
        device: where the frequencies live (e.g. ``"meta"`` to plan a model without memory).

    Shapes:
        ``forward(x, positions)``: ``x`` ``(..., T, D)`` (e.g. ``(B, H, T, D)``); positions
        ``(T,)`` or ``(B, T)`` for 1-D, ``(T, axes)`` or ``(B, T, axes)`` otherwise (batched
        positions are broadcast over the head dimension of a 4-D ``x``).

    Example:
        2-D RoPE for a ViT's attention on a 14×14 patch grid:

        >>> rope = RotaryEmbedding(64, axes=2)
        >>> pos = grid_positions(14, 14)                      # (196, 2)
        >>> q, k = torch.randn(2, 4, 196, 64), torch.randn(2, 4, 196, 64)
        >>> q, k = rope(q, pos), rope(k, pos)                 # (B, H, 196, 64) each
        >>> torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1).shape
        torch.Size([2, 4, 196, 196])
    """

    freqs: torch.Tensor

    def __init__(
        self,
        dim: int,
        *,
        rotary_dim: int | None = None,
        axes: int = 1,
        frequencies: Frequencies = "axial",
        split: Sequence[int] | None = None,
        base: float | None = None,
        layout: Layout = "half",
        scaling: Scaling = "none",
        factor: float = 1.0,
        learnable: bool = False,
        num_heads: int | None = None,
        angle_dtype: torch.dtype = torch.float32,
        backend: Backend = "auto",
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.dim = _check_rotary_dim("dim", dim)
        self.rotary_dim = _check_rotary_dim("rotary_dim", dim if rotary_dim is None else rotary_dim)
        if self.rotary_dim > self.dim:
            raise ValueError(f"rotary_dim={rotary_dim} must not exceed dim={dim}")
        self.axes = axes
        check_choice("frequencies", frequencies, FREQUENCIES)
        check_choice("layout", layout, LAYOUTS)
        check_choice("backend", backend, BACKENDS)
        check_choice("scaling", scaling, SCALINGS)
        self.frequencies: Frequencies = frequencies
        self.layout: Layout = layout
        self.backend: Backend = backend
        self.scaling: str = scaling  # a Scaling, or the rope_type of a config (from_config)
        self.factor = factor
        if angle_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"angle_dtype={angle_dtype} is not supported; accepted: torch.float32, torch.float64")
        self.angle_dtype = angle_dtype
        if frequencies == "mixed":
            if split is not None:
                raise ValueError("split= applies to frequencies='axial' only")
            if scaling != "none":
                raise ValueError(f"scaling={scaling!r} applies to frequencies='axial' only; scale positions instead")
            self.base = _check_base(100.0 if base is None else base)
            generator = torch.Generator().manual_seed(seed)
            freqs = mixed_frequencies(self.rotary_dim, axes, base=self.base, num_heads=num_heads, generator=generator)
        else:
            if num_heads is not None:
                raise ValueError("num_heads= applies to frequencies='mixed' only")
            self.base = _check_base(10000.0 if base is None else base)
            freqs = axial_frequencies(
                self.rotary_dim, axes, base=self.base, split=split, scaling=scaling, factor=factor
            )
        self.num_heads = num_heads
        self.learnable = learnable
        self.attention_factor = 1.0  # multiplies cos and sin (a long-context scaling's, see from_config)
        self._set_frequencies(freqs, device)

    def _set_frequencies(self, freqs: torch.Tensor, device: torch.device | str | None) -> None:
        """Hold ``freqs`` (float64) as the ``freqs`` buffer (or parameter) in ``angle_dtype`` on ``device``;
        the float64 values stay, outside the module's cast path, for materialising a meta module."""
        self._definition = freqs.detach().to("cpu", torch.float64)  # a plain attribute: .to()/.half() never reach it
        value = self._definition.to(self.angle_dtype).to(device or "cpu")
        if self.learnable:
            self.freqs = nn.Parameter(value)
        else:
            self.register_buffer("freqs", value, persistent=True)
        self._table: tuple[torch.Tensor, torch.Tensor, float] | None = (
            None  # cos, sin, the attention factor they include
        )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RotaryEmbedding:
        """``nn.Module._apply`` (behind ``.to()``, ``.half()``, ``.cuda()``, ``.to_empty()``...) with the
        frequencies kept in ``angle_dtype``: they follow the device, never a cast."""
        before = self.freqs.detach()  # a separate handle: a parameter's .data is swapped in place below
        grad = None if self.freqs.grad is None else self.freqs.grad.detach()
        super()._apply(fn, recurse)
        self._restore_frequencies(before, grad)
        return self

    def _restore_frequencies(self, before: torch.Tensor, grad: torch.Tensor | None) -> None:
        """After ``_apply``: the frequencies' values in ``angle_dtype`` on their new device (recomputed
        from the float64 definition when leaving the meta device, which holds no values)."""
        device = self.freqs.device
        source = self._definition if before.is_meta and device.type != "meta" else before
        kept = source.to(self.angle_dtype).to(device)
        if isinstance(self.freqs, nn.Parameter):
            self.freqs.data = kept
            if grad is not None:
                self.freqs.grad = grad.to(self.angle_dtype).to(device)
        else:
            self._buffers["freqs"] = kept
        self._table = None

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        layer_type: str | None = None,
        seq_len: int | None = None,
        angle_dtype: torch.dtype = torch.float32,
        backend: Backend = "auto",
        device: torch.device | str | None = None,
    ) -> RotaryEmbedding:
        """The rotary embedding a transformers model builds from ``config``.

        Its head width, its rotated share, its ``rope_type`` scaling with that scaling's attention factor
        (applied to cos and sin, as transformers does) and its pair layout (``rope_interleave``: the
        interleaved pairs of DeepSeek-V3; attention scores are those of transformers, whose output order
        differs by a fixed permutation of the rotated coordinates). An M-RoPE config (Qwen2-VL, Qwen2.5-VL,
        Qwen3-VL: ``mrope_section`` or the family's default sections) gives ``axes=3``: positions are
        ``(T, 3)`` or ``(B, T, 3)`` (temporal, height, width; transformers' ``(3, B, T)`` moved last), see
        :func:`kexue.positional.mrope.mrope_frequencies` and :func:`kexue.positional.mrope.mrope_position_ids`.

        Args:
            config: a transformers config with ``rope_parameters`` (or any object with its fields).
            layer_type: one entry of a per-layer-type config (Gemma 3: ``"sliding_attention"`` or
                ``"full_attention"``).
            seq_len: the frequencies of ``dynamic`` and ``longrope`` depend on the length; they are fixed
                here for ``seq_len`` (default: the trained length). For ``dynamic``, pass the longest
                length a cache will hold (prompt plus new tokens): every key and query of that cache then
                uses one base, which keeps attention a function of relative position. transformers instead
                changes the base as the sequence grows, so keys cached under the old base no longer match
                queries rotated under the new one.
            angle_dtype: float32 or float64, as in the constructor.
            backend: passed to :func:`apply_rotary`.
            device: where the frequencies live (``"meta"`` included); they keep ``angle_dtype`` through
                casts of the module, as in the constructor.

        Returns:
            The :class:`RotaryEmbedding`.

        Raises:
            ValueError: a config without RoPE parameters or with an invalid scaling or M-RoPE field,
                each named.

        Example:
            >>> from types import SimpleNamespace
            >>> linear = {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
            >>> config = SimpleNamespace(head_dim=64, hidden_size=256, num_attention_heads=4,
            ...                          max_position_embeddings=4096, rope_parameters=linear)
            >>> RotaryEmbedding.from_config(config).scaling
            'linear'
        """
        params = rope_parameters_from_config(config, seq_len=seq_len, layer_type=layer_type)
        layout: Layout = "interleaved" if getattr(config, "rope_interleave", False) else "half"
        mrope = mrope_layout(config)
        freqs = (
            params.inv_freq[None]
            if mrope is None
            else mrope_frequencies(params.inv_freq, mrope[0], interleaved=mrope[1])
        )
        rope = cls(
            params.head_dim,
            rotary_dim=params.rotary_dim,
            base=params.base,
            layout=layout,
            angle_dtype=angle_dtype,
            backend=backend,
        )
        rope.axes = freqs.shape[0]  # 3 for M-RoPE: (temporal, height, width) positions
        rope._set_frequencies(freqs, device)
        rope.scaling = params.rope_type
        rope.attention_factor = params.attention_factor
        return rope

    def extra_repr(self) -> str:
        """The constructor's settings, for ``repr``.

        Returns:
            ``"dim=…, rotary_dim=…, axes=…, …"``.
        """
        return (
            f"dim={self.dim}, rotary_dim={self.rotary_dim}, axes={self.axes}, frequencies={self.frequencies!r}, "
            f"base={self.base:g}, layout={self.layout!r}, scaling={self.scaling!r}, learnable={self.learnable}"
        )

    # positions -> angles -> cos/sin

    def _as_positions(self, positions: torch.Tensor | Sequence[float], validate: bool = True) -> torch.Tensor:
        """Check positions and return them as ``(..., T, axes)`` on the frequencies' device
        (values are read, for finiteness, only when ``validate`` and not on the meta device)."""
        device = self.freqs.device
        if not isinstance(positions, torch.Tensor):
            positions = torch.as_tensor(positions, device=device)
        if positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(f"positions must be real numbers; got dtype {positions.dtype}")
        positions = positions.to(device=device)
        if validate and positions.is_floating_point() and not positions.is_meta:
            check_finite("positions", positions)
        if self.axes == 1:
            if positions.dim() not in (1, 2):
                raise ValueError(f"positions must have shape (T,) or (B, T) for axes=1; got {tuple(positions.shape)}")
            return positions.unsqueeze(-1)
        if positions.dim() not in (2, 3) or positions.shape[-1] != self.axes:
            raise ValueError(
                f"positions must have shape (T, {self.axes}) or (B, T, {self.axes}) for axes={self.axes}; "
                f"got {tuple(positions.shape)}"
            )
        return positions

    def _angles(self, p: torch.Tensor) -> torch.Tensor:
        """``p F`` as elementwise products summed over the axes: autocast (which lowers ``matmul``)
        leaves them in ``angle_dtype``."""
        p = p.to(self.angle_dtype).unsqueeze(-1)  # (..., T, axes, 1)
        freqs = self.freqs.to(self.angle_dtype)
        if freqs.dim() == 3:  # (H, axes, R/2): per-head mixed frequencies
            return (p.unsqueeze(-4) * freqs.unsqueeze(-3)).sum(-2)  # (..., H, T, R/2)
        return (p * freqs).sum(-2)  # (..., T, R/2)

    def angles(self, positions: torch.Tensor | Sequence[float], *, validate: bool = True) -> torch.Tensor:
        """``φ = p F``: one angle per rotated pair, in ``angle_dtype``.

        Args:
            positions: ``(T,)``/``(B, T)`` (axes=1) or ``(T, axes)``/``(B, T, axes)``.
            validate: check that float positions are finite (a read back to the host).

        Returns:
            ``(..., T, R/2)``; with per-head frequencies ``(..., H, T, R/2)``.
        """
        return self._angles(self._as_positions(positions, validate))

    def cos_sin(
        self, positions: torch.Tensor | Sequence[float], *, validate: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of :meth:`angles` (in ``angle_dtype``), times :attr:`attention_factor`, for :func:`apply_rotary`.

        The attention factor is 1 unless a scaling defines one (as transformers scales its tables).

        Args:
            positions: as in :meth:`angles`.
            validate: ``False``: no value is read back to the host (see :meth:`forward`).

        Returns:
            ``(cos, sin)``, each of :meth:`angles`' shape.

        Example:
            >>> cos, sin = RotaryEmbedding(64).cos_sin(torch.arange(128))
            >>> cos.shape, cos.dtype
            (torch.Size([128, 32]), torch.float32)
        """
        return self._cos_sin(self._as_positions(positions, validate), validate)

    def _cos_sin(self, p: torch.Tensor, validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if validate and self._can_cache() and not p.is_meta and _whole_nonnegative(p):
            index = p[..., 0].long()
            cos, sin = self._cached(int(index.max()) + 1 if index.numel() else 1)
            return cos[index], sin[index]
        return self._tables(self._angles(p))

    def _tables(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.attention_factor == 1.0:
            return phi.cos(), phi.sin()
        return phi.cos() * self.attention_factor, phi.sin() * self.attention_factor

    def _can_cache(self) -> bool:
        return self.axes == 1 and not self.freqs.requires_grad

    def _cached(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions ``0 … L−1`` with ``L ≥ length`` (rebuilt when it must grow)."""
        table = self._table
        if (
            table is None
            or table[0].shape[0] < length
            or table[0].device != self.freqs.device
            or table[0].dtype != self.angle_dtype
            or table[2] != self.attention_factor
        ):
            size = max(64, 1 << (length - 1).bit_length())
            phi = self._angles(torch.arange(size, device=self.freqs.device)[:, None])
            self._table = table = (*self._tables(phi), self.attention_factor)
        return table[0], table[1]

    def _offset_tables(
        self, x: torch.Tensor, offset: torch.Tensor, validate: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence tables ``(B, [1,] T, R/2)``: sequence ``b`` at ``offset[b], …, offset[b] + T − 1``."""
        if (
            offset.dim() != 1
            or offset.dtype.is_floating_point
            or offset.dtype == torch.bool
            or offset.shape[0] != x.shape[0]
        ):
            raise ValueError(
                f"offset as a tensor must be 1-D integers, one per sequence (x.shape[0]={x.shape[0]}); "
                f"got shape {tuple(offset.shape)} {offset.dtype}"
            )
        if validate and offset.numel() and not offset.is_meta and int(offset.min()) < 0:
            raise ValueError(f"offset must be non-negative; got minimum {int(offset.min())}")
        tokens = x.shape[-2]
        index = offset.to(self.freqs.device)[:, None] + torch.arange(tokens, device=self.freqs.device)  # (B, T)
        cos, sin = self._cos_sin(index[..., None], validate)  # from the cached table where it applies
        if x.dim() >= 4:
            cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
        return cos, sin

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must be (..., T, D); got shape {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x.shape[-1]={x.shape[-1]} does not match dim={self.dim}")
        if x.device != self.freqs.device:
            raise ValueError(
                f"x is on {x.device} but this RotaryEmbedding's frequencies are on {self.freqs.device}; "
                f"move the module with .to({str(x.device)!r})"
            )

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | Sequence[float] | None = None,
        *,
        offset: int | torch.Tensor = 0,
        inverse: bool = False,
        out: torch.Tensor | None = None,
        validate: bool = True,
    ) -> torch.Tensor:
        """Rotate ``x`` at ``positions`` (default for 1-D: ``offset, …, offset + T − 1``).

        Args:
            x: ``(..., T, D)`` queries or keys (e.g. ``(B, H, T, D)``).
            positions: ``(T,)`` or ``(B, T)`` for 1-D, ``(T, axes)`` or ``(B, T, axes)`` otherwise.
            offset: the first position when ``positions`` is None; a ``(B,)`` integer tensor gives one
                start per sequence of ``x`` (``(B, H, T, D)`` or ``(B, T, D)``): batched decoding with KV
                caches of different lengths, rotated in one kernel call through broadcast tables.
            inverse: rotate back (``Rᵀ x``).
            out: write the result here (as in :func:`apply_rotary`).
            validate: with ``True`` (the default) explicit float positions are checked finite and tensor
                offsets non-negative, and 1-D integer positions are looked up in the cached table: each
                reads values back to the host, a synchronisation per call on a GPU. With ``False`` nothing
                is read back (no ``.item()``, ``bool()`` or ``int()`` of a tensor): tables are computed on
                the device from the positions as given, for the per-layer calls of a model whose positions
                are known to be valid. Default positions with an integer ``offset`` never synchronise.

        Returns:
            The rotated tensor, ``x``'s shape and dtype.

        Example:
            >>> rope = RotaryEmbedding(64)
            >>> rope(torch.randn(2, 8, 16, 64), offset=100).shape
            torch.Size([2, 8, 16, 64])
        """
        self._check_input(x)
        tokens = x.shape[-2]
        if positions is None:
            if self.axes != 1:
                raise ValueError(f"positions are required for axes={self.axes} (e.g. grid_positions(h, w))")
            if isinstance(offset, torch.Tensor):
                cos, sin = self._offset_tables(x, offset, validate)
            else:
                check_int("offset", offset, 0)
                if self._can_cache():
                    cos, sin = self._cached(offset + tokens)
                    cos, sin = cos[offset : offset + tokens], sin[offset : offset + tokens]
                else:
                    cos, sin = self._cos_sin(torch.arange(offset, offset + tokens, device=self.freqs.device)[:, None])
        else:
            p = self._as_positions(positions, validate)
            if p.shape[-2] != tokens:
                raise ValueError(f"positions hold {p.shape[-2]} tokens but x has T={tokens} (x.shape[-2])")
            cos, sin = self._cos_sin(p, validate)
            batched = p.dim() - 2  # leading batch dims of the positions
            if batched and self.freqs.dim() == 2 and x.dim() >= 4:
                cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
        if self.attention_factor != 1.0 and inverse:
            raise ValueError(
                f"inverse=True undoes a rotation, but this embedding also scales by attention_factor="
                f"{self.attention_factor:g}; divide by it after the inverse rotation instead"
            )
        return apply_rotary(x, cos, sin, layout=self.layout, inverse=inverse, out=out, backend=self.backend)


# --- layout conversion ---------------------------------------------------------------------------


def _whole_nonnegative(p: torch.Tensor) -> bool:
    if p.numel() == 0:
        return True
    if p.is_floating_point() and not bool((p == p.round()).all()):
        return False
    return bool((p >= 0).all())


def layout_permutation(head_dim: int, *, source: Layout, target: Layout, rotary_dim: int | None = None) -> torch.Tensor:
    """Index ``perm`` with ``new = old[perm]`` converting one head's coordinates between layouts.

    Interleaved pair ``j`` is coordinates ``(2j, 2j+1)``; half pair ``j`` is ``(j, j + R/2)``.
    Coordinates past ``rotary_dim`` keep their place.

    Args:
        head_dim: coordinates per head (even).
        source: the layout of the coordinates given.
        target: the layout wanted.
        rotary_dim: rotated coordinates per head (partial rotary); default ``head_dim``.

    Returns:
        ``(head_dim,)`` int64 indices.

    Example:
        >>> layout_permutation(8, source="interleaved", target="half").tolist()
        [0, 2, 4, 6, 1, 3, 5, 7]
    """
    head_dim = _check_rotary_dim("head_dim", head_dim)
    rotary = _check_rotary_dim("rotary_dim", head_dim if rotary_dim is None else rotary_dim)
    if rotary > head_dim:
        raise ValueError(f"rotary_dim={rotary_dim} must not exceed head_dim={head_dim}")
    check_choice("source", source, LAYOUTS)
    check_choice("target", target, LAYOUTS)
    perm = torch.arange(head_dim)
    if source == target:
        return perm
    half = rotary // 2
    to_half = torch.cat((torch.arange(0, rotary, 2), torch.arange(1, rotary, 2)))  # half[k] = interleaved[to_half[k]]
    perm[:rotary] = to_half if target == "half" else torch.argsort(to_half)
    assert perm[:rotary].unique().numel() == 2 * half
    return perm


def convert_layout(
    weight: torch.Tensor,
    num_heads: int,
    *,
    source: Layout,
    target: Layout,
    rotary_dim: int | None = None,
    dim: int = 0,
) -> torch.Tensor:
    """Permute a q or k projection's output features from one pair layout to the other.

    A checkpoint trained with one layout runs with the other once ``W_q`` and ``W_k`` (and
    their biases) have their per-head output coordinates permuted: attention scores are then
    identical. This is the permutation of HF's Meta-LLaMA conversion (interleaved → half).

    Args:
        weight: ``nn.Linear`` weight ``(num_heads · head_dim, in_features)`` or bias
            ``(num_heads · head_dim,)``; ``dim`` selects the output-feature axis.
        num_heads: heads in this projection (the KV heads for ``k_proj`` under GQA).
        source, target: ``"half"`` or ``"interleaved"``.
        rotary_dim: rotated coordinates per head (partial rotary); default the head dim.

    Returns:
        A new tensor with permuted rows (the input is unchanged).

    Example:
        >>> q_proj = torch.nn.Linear(64, 4 * 16)                   # 4 heads of 16
        >>> w = convert_layout(q_proj.weight.data, 4, source="interleaved", target="half")
        >>> w.shape, torch.equal(w[1], q_proj.weight.data[2])      # half pair 0 = interleaved coordinates 0, 1
        (torch.Size([64, 64]), True)
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor; got {type(weight).__name__}")
    check_int("num_heads", num_heads, 1)
    if weight.dim() == 0 or not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"weight has shape {tuple(weight.shape)}: no dimension dim={dim} to convert")
    size = weight.shape[dim]
    if size == 0 or size % num_heads or (size // num_heads) % 2:
        raise ValueError(f"weight.shape[{dim}]={size} must split into num_heads={num_heads} heads of an even head_dim")
    head_dim = size // num_heads
    perm = layout_permutation(head_dim, source=source, target=target, rotary_dim=rotary_dim)
    index = (perm + head_dim * torch.arange(num_heads)[:, None]).reshape(-1).to(weight.device)
    return weight.index_select(dim, index)
