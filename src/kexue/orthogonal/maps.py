"""Orthogonal maps sending one unit vector to another, formed or applied in O(d) per vector.

Every map here is the identity (or minus the identity) plus a rank-1 or rank-2 term,

    T = β I + V Uᵀ,        U, V ∈ R^{d x r},  r ∈ {1, 2},  β = ±1,

so ``T x = β x + V (Uᵀ x)`` costs two passes over ``x`` and never forms ``T``. With unit
``a, b``, ``v = (a − b)/‖a − b‖`` and ``w = (a + b)/‖a + b‖`` (note ``‖a + b‖² = 2(1 + cos θ)``,
so ``(a + b)(a + b)ᵀ / (1 + cos θ) = 2 w wᵀ``):

=============  ============================================  =====  ===========================
kind           T                                             det    maps
=============  ============================================  =====  ===========================
reflection     ``I − 2 v vᵀ``          (Householder)         −1     a → b and b → a
rotation       ``I + 2 b aᵀ − 2 w wᵀ`` (= H_w H_a)           +1     a → b; identity off span{a,b}
symmetric      ``2 w wᵀ − I``          (the article's answer) (−1)^(d−1)  a → b and b → a
=============  ============================================  =====  ===========================

Numerics: ``a`` and ``b`` are normalised and the factors built in float64 whatever the
input dtype (it is O(d) work), then cast to the working dtype. Rounded "unit" vectors have
norms ``1 ± ε``, and every formula for ``T`` amplifies that mismatch by ``1/‖a ∓ b‖`` near
the degenerate points (done naively in float64, ``‖T a − b‖`` reaches 0.02 at a gap of
1e-14). So ``â``, ``b̂`` and ``â ± b̂`` are computed in double-word arithmetic (pairs
``hi + lo``, error-free TwoSum/TwoProduct), which fixes the direction of ``â ∓ b̂`` to
working precision for any gap, and ``a ± b`` is scaled to unit length instead of dividing
by ``1 + cos θ``. The printed formulas lose all precision as ``a → ±b``; these keep
``‖T a − b‖`` within a few ulps of the working dtype up to and including the degenerate
point.

Degenerate inputs (the mirror or rotation plane is not determined): ``‖â − b̂‖ ≤ 4ε`` for
``reflection`` and ``‖â + b̂‖ ≤ 4ε`` for ``rotation`` and ``symmetric`` (ε of float64: below
that the direction of ``â ∓ b̂`` is rounding noise, e.g. for ``b = 3a`` exactly). With
``degenerate="canonical"`` (default) the missing direction is replaced by the canonical
perpendicular ``p = (e_k − a_k a)/‖e_k − a_k a‖`` with ``k = argmin_i |a_i|`` (first
index on ties), which keeps the kind's determinant and symmetry:

* reflection, a = b: ``T = I − 2 p pᵀ`` (a mirror containing a);
* rotation, a = −b: ``T = I − 2 a aᵀ − 2 p pᵀ`` (the half-turn in span{a, p});
* symmetric, a = −b: ``T = 2 p pᵀ − I``.

With ``degenerate="raise"`` a ValueError is raised instead. In dimension 1 no perpendicular
exists and the degenerate cases always raise.

Devices and precision: the factors are built on the inputs' device in float64 (float32 on MPS,
which lacks float64); the canonical choice is taken with ``torch.where``, not a branch, so with
``validate=False`` (and ``degenerate="canonical"``, ``d > 1``) a call reads no value back to the
host: the per-batch hot call on a GPU does not synchronise, and the meta device gives shapes.
``validate=True`` (the default) checks ``a`` and ``b`` (finite, nonzero or unit length), which
needs their values on the host once per call. Autocast does not lower the precision: the
products are computed in the documented dtypes with autocast off.

References:
    Su Jianlin, "从一个单位向量变换到另一个单位向量的正交矩阵", Scientific Spaces, 2021,
    https://kexue.fm/archives/8453
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, get_args, overload

import numpy as np
import numpy.typing as npt
import torch

from kexue._device import autocast_disabled
from kexue._shared import as_float_tensor, check_bool, check_choice, check_finite, empty_like_fast, restore_type

__all__ = [
    "DEGENERATES",
    "KINDS",
    "Degenerate",
    "Kind",
    "LowRank",
    "apply_orthogonal_map",
    "low_rank_factors",
    "orthogonal_map",
]

Kind = Literal["reflection", "rotation", "symmetric"]
Degenerate = Literal["canonical", "raise"]
KINDS: tuple[Kind, ...] = get_args(Kind)
DEGENERATES: tuple[Degenerate, ...] = get_args(Degenerate)
# what the array functions accept: a torch tensor (the result is torch) or a NumPy array-like (the result is NumPy)
ArrayInput = torch.Tensor | npt.ArrayLike


class LowRank(NamedTuple):
    """The factors of ``T = beta * I + V @ U.mT`` (what :func:`low_rank_factors` returns).

    Args:
        beta: ``+1`` or ``-1``, the multiple of the identity.
        U: shape ``(..., d, r)``, ``r`` in {1, 2}.
        V: shape ``(..., d, r)``.
    """

    beta: float
    U: torch.Tensor
    V: torch.Tensor


def _scaled_unit(u: torch.Tensor) -> torch.Tensor:
    """``u/‖u‖`` along the last dim, safe from overflow and underflow; zero rows stay zero (no NaN)."""
    scale = u.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    is_zero = scale == 0
    u = u / torch.where(is_zero, torch.ones_like(scale), scale)
    norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    return u / torch.where(is_zero, torch.ones_like(norm), norm)


# --- double-word arithmetic ----------------------------------------------------------------------
# Rounded "unit" vectors have norms 1 ± ε, and the direction of â ∓ b̂ amplifies that mismatch by
# 1/‖â ∓ b̂‖ (a residual ‖T a − b‖ of 0.02 at a gap of 1e-14 in float64 when done naively). So
# the unit vectors and their sum/difference are computed as unevaluated pairs hi + lo (Dekker,
# 1971; Knuth's TwoSum), which makes the direction of â ∓ b̂ correct to working precision for
# any gap. Only a and b (O(d) values) go through this; x never does.


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    factor = 134217729.0 if a.dtype == torch.float64 else 4097.0  # 2^ceil(p/2) + 1
    c = factor * a
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def _dw_add(
    h1: torch.Tensor, l1: torch.Tensor, h2: torch.Tensor, l2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    s, e = _two_sum(h1, h2)
    e = e + (l1 + l2)
    hi = s + e
    return hi, e - (hi - s)


def _dw_sum_last(hi: torch.Tensor, lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise double-word sum over the last dimension (log2(d) vectorised steps)."""
    while hi.shape[-1] > 1:
        if hi.shape[-1] % 2:
            pad = hi.new_zeros((*hi.shape[:-1], 1))
            hi, lo = torch.cat([hi, pad], -1), torch.cat([lo, pad], -1)
        hi, lo = _dw_add(hi[..., 0::2], lo[..., 0::2], hi[..., 1::2], lo[..., 1::2])
    return hi, lo


def _dw_unit(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``u/‖u‖`` as a double-word pair; rows of u must be nonzero and finite."""
    _, exponent = torch.frexp(u.abs().amax(dim=-1, keepdim=True))
    u = torch.ldexp(u, -exponent)  # exact power-of-two scaling: max |u_i| in [0.5, 1)
    sq_hi, sq_lo = _dw_sum_last(*_two_prod(u, u))  # ‖u‖² to ~ε²
    r = torch.rsqrt(sq_hi)
    # one Newton step for 1/sqrt(s) in double-word: r ← r + r (1 − s r²) / 2
    r2_hi, r2_lo = _two_prod(r, r)
    t_hi, t_lo = _two_prod(sq_hi, r2_hi)
    t_lo = t_lo + sq_hi * r2_lo + sq_lo * r2_hi
    residual = (1.0 - t_hi) - t_lo  # 1 − s r² ~ ε: plain arithmetic suffices
    r_hi, r_lo = _two_sum(r, r * residual / 2)
    p_hi, p_lo = _two_prod(u, r_hi)
    return _two_sum(p_hi, p_lo + u * r_lo)


def _accurate_directions(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit ``â, b̂`` and the (unnormalised, correctly rounded) ``â − b̂`` and ``â + b̂``."""
    a_hi, a_lo = _dw_unit(a)
    b_hi, b_lo = _dw_unit(b)
    d_hi, d_lo = _dw_add(a_hi, a_lo, -b_hi, -b_lo)
    s_hi, s_lo = _dw_add(a_hi, a_lo, b_hi, b_lo)
    return a_hi, b_hi, d_hi + d_lo, s_hi + s_lo


def _canonical_perpendicular(a: torch.Tensor) -> torch.Tensor:
    """Unit ``p ⟂ a``: ``e_k − a_k a`` normalised, ``k`` the first index of the smallest ``|a_k|``."""
    k = a.abs().argmin(dim=-1, keepdim=True)  # (..., 1)
    e_k = torch.zeros_like(a).scatter_(-1, k, 1.0)
    p = e_k - a.gather(-1, k) * a  # ‖p‖² = 1 − a_k² ≥ 1 − 1/d
    return p / torch.linalg.vector_norm(p, dim=-1, keepdim=True)


def _direction(u: torch.Tensor, a: torch.Tensor, degenerate: Degenerate, what: str) -> torch.Tensor:
    """Unit ``u``; where ``‖u‖ ≤ 4ε`` the canonical perpendicular of ``a`` (or raise).

    ``u`` is ``â − b̂`` or ``â + b̂`` for unit ``â, b̂``. Below 4ε its direction is rounding
    noise (e.g. ``b = 3a`` exactly), while the canonical map is off by only ``‖u‖ ≤ 4ε``.
    With ``degenerate="canonical"`` in ``d > 1`` the choice is a ``torch.where`` (no host
    sync); raising (on request, or in dimension 1 where no perpendicular exists) reads the
    test back to the host.
    """
    direction = _scaled_unit(u)
    is_degenerate = torch.linalg.vector_norm(u.detach(), dim=-1) <= 4 * torch.finfo(u.dtype).eps
    if degenerate == "raise" or a.shape[-1] == 1:
        _raise_if_degenerate(is_degenerate, a.shape[-1], what)
        return direction
    return torch.where(is_degenerate.unsqueeze(-1), _canonical_perpendicular(a), direction)


def _raise_if_degenerate(is_degenerate: torch.Tensor, d: int, what: str) -> None:
    """The ValueError for a degenerate pair, naming its first batch index (reads the test on the host)."""
    if is_degenerate.device.type == "meta":
        raise ValueError(
            "degenerate='raise' (and dimension d = 1) needs the values of a and b; "
            "on the meta device use degenerate='canonical' with d > 1"
        )
    if not bool(is_degenerate.any()):
        return
    where = tuple(int(i) for i in is_degenerate.nonzero()[0]) if is_degenerate.dim() else ()
    reason = (
        "dimension 1 has no perpendicular direction"
        if d == 1
        else "pass degenerate='canonical' to use the canonical perpendicular of a"
    )
    raise ValueError(f"degenerate input: {what} at batch index {where}; the map is not determined ({reason})")


def _reflection(
    a: torch.Tensor, b: torch.Tensor, diff: torch.Tensor, total: torch.Tensor, degenerate: Degenerate
) -> LowRank:
    v = _direction(diff, a, degenerate, "a == b")
    return LowRank(beta=1.0, U=v.unsqueeze(-1), V=(-2.0 * v).unsqueeze(-1))


def _rotation(
    a: torch.Tensor, b: torch.Tensor, diff: torch.Tensor, total: torch.Tensor, degenerate: Degenerate
) -> LowRank:
    w = _direction(total, a, degenerate, "a == -b")
    U = torch.stack([a, w], dim=-1)  # (..., d, 2)
    V = torch.stack([2.0 * b, -2.0 * w], dim=-1)
    return LowRank(beta=1.0, U=U, V=V)


def _symmetric(
    a: torch.Tensor, b: torch.Tensor, diff: torch.Tensor, total: torch.Tensor, degenerate: Degenerate
) -> LowRank:
    w = _direction(total, a, degenerate, "a == -b")
    return LowRank(beta=-1.0, U=w.unsqueeze(-1), V=(2.0 * w).unsqueeze(-1))


# kind -> factors from (â, b̂, â − b̂, â + b̂, degenerate)
_FACTORS: dict[Kind, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Degenerate], LowRank]] = {
    "reflection": _reflection,
    "rotation": _rotation,
    "symmetric": _symmetric,
}


def _check_shapes(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a, b`` are vectors ``(..., d)`` of one ``d >= 1`` (shapes only: no value is read)."""
    for name, u in (("a", a), ("b", b)):
        if u.dim() == 0:
            raise ValueError(f"{name} must have at least one dimension (..., d); got a scalar")
        if u.shape[-1] == 0:
            raise ValueError(f"{name} has last dimension 0; vectors need d >= 1")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"a and b must have the same last dimension d; got a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}"
        )


def _check_values(
    a: torch.Tensor, b: torch.Tensor, normalize: bool, a_dtype: torch.dtype, b_dtype: torch.dtype
) -> None:
    """Validate the values of ``a, b`` (see ``normalize`` in :func:`orthogonal_map`); ``*_dtype`` are
    the callers' dtypes. Reads the checks back to the host (one sync per check on a GPU)."""
    if a.device.type == "meta":
        raise ValueError(
            "validate=True needs the values of a and b, which the meta device does not have; "
            "pass validate=False on the meta device"
        )
    for name, u in (("a", a), ("b", b)):
        check_finite(name, u)
    for name, u, input_dtype in (("a", a, a_dtype), ("b", b, b_dtype)):
        if normalize:
            is_zero = u.abs().amax(dim=-1) == 0
            if bool(is_zero.any()):
                where = tuple(is_zero.nonzero()[0].tolist())
                raise ValueError(f"{name} has zero norm (at batch index {where}); it cannot be normalised")
            continue
        tol = torch.finfo(input_dtype).eps ** 0.5
        worst = float((torch.linalg.vector_norm(u, dim=-1) - 1).abs().max())
        if worst > tol:
            raise ValueError(
                f"{name} is not unit length (| ||{name}|| - 1 | = {worst:.3g} > {tol:.3g}) and normalize=False; "
                "pass unit vectors or normalize=True"
            )


def _differentiable(
    a: torch.Tensor, b: torch.Tensor, accurate: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The values of ``accurate`` (â, b̂, â − b̂, â + b̂) with the gradient of the plain formulas."""
    a_u, b_u = _scaled_unit(a), _scaled_unit(b)
    plain = (a_u, b_u, a_u - b_u, a_u + b_u)
    a_hat, b_hat, diff, total = (p + (q - p).detach() for p, q in zip(plain, accurate, strict=True))
    return a_hat, b_hat, diff, total


def low_rank_factors(
    a: ArrayInput,
    b: ArrayInput,
    *,
    kind: Kind = "reflection",
    normalize: bool = True,
    degenerate: Degenerate = "canonical",
    validate: bool = True,
) -> LowRank:
    """The factors of ``T = β I + V Uᵀ`` for vectors ``a, b`` of shape ``(..., d)``.

    Computed in float64 (float32 on MPS, which lacks float64), with the unit vectors and
    ``â ± b̂`` in double-word arithmetic so that the mirror/rotation plane is correct to
    working precision however close ``a`` is to ``±b``; cast the factors to the working
    dtype before use. Differentiable: gradients flow through the plain formulas (same
    derivative), the values come from the accurate ones. See the module docstring for the
    formulas and the degenerate cases.

    Args:
        a: source vector(s), shape ``(..., d)``; torch tensor, NumPy array or array-like.
        b: target vector(s), shape broadcastable with ``a``.
        kind: see :func:`orthogonal_map`.
        normalize: see :func:`orthogonal_map`.
        degenerate: see :func:`orthogonal_map`.
        validate: see :func:`orthogonal_map`.

    Returns:
        ``LowRank(beta, U, V)``: ``U`` and ``V`` torch tensors of shape ``(..., d, r)``,
        ``r = 2`` for ``"rotation"`` and 1 otherwise, in float64 (float32 on MPS) on ``a``'s
        device.

    Example:
        >>> import torch
        >>> from kexue.orthogonal import low_rank_factors
        >>> beta, U, V = low_rank_factors(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), kind="rotation")
        >>> beta, tuple(U.shape), U.dtype
        (1.0, (2, 2), torch.float64)
    """
    check_choice("kind", kind, KINDS)
    check_choice("degenerate", degenerate, DEGENERATES)
    check_bool("validate", validate)
    a_in, _ = as_float_tensor("a", a)
    b_in, _ = as_float_tensor("b", b, like=a_in)
    dtype = torch.float32 if a_in.device.type == "mps" else torch.float64
    a_work, b_work = a_in.to(dtype), b_in.to(dtype)
    _check_shapes(a_work, b_work)
    if validate:
        _check_values(a_work, b_work, normalize, a_in.dtype, b_in.dtype)
    try:
        a_b, b_b = torch.broadcast_tensors(a_work, b_work)
    except RuntimeError as exc:
        raise ValueError(
            f"a and b must broadcast; got a.shape={tuple(a_in.shape)}, b.shape={tuple(b_in.shape)}"
        ) from exc
    with torch.no_grad():
        accurate = _accurate_directions(a_b, b_b)  # (â, b̂, â − b̂, â + b̂)
    if torch.is_grad_enabled() and (a_b.requires_grad or b_b.requires_grad):
        accurate = _differentiable(a_b, b_b, accurate)
    return _FACTORS[kind](*accurate, degenerate)


@overload
def orthogonal_map(
    a: torch.Tensor,
    b: ArrayInput,
    *,
    kind: Kind = ...,
    normalize: bool = ...,
    degenerate: Degenerate = ...,
    validate: bool = ...,
) -> torch.Tensor: ...
@overload
def orthogonal_map(
    a: npt.ArrayLike,
    b: ArrayInput,
    *,
    kind: Kind = ...,
    normalize: bool = ...,
    degenerate: Degenerate = ...,
    validate: bool = ...,
) -> np.ndarray: ...
def orthogonal_map(
    a: ArrayInput,
    b: ArrayInput,
    *,
    kind: Kind = "reflection",
    normalize: bool = True,
    degenerate: Degenerate = "canonical",
    validate: bool = True,
) -> torch.Tensor | np.ndarray:
    """The orthogonal matrix ``T`` with ``T a = b``, batched over leading dimensions.

    Args:
        a: source vector(s), shape ``(..., d)``; torch tensor, NumPy array or array-like.
        b: target vector(s), shape broadcastable with ``a``.
        kind: ``"reflection"`` (Householder, det −1), ``"rotation"`` (det +1, identity on
            the complement of span{a, b}) or ``"symmetric"`` (the article's final answer,
            ``(a + b)(a + b)ᵀ/(1 + cos θ) − I``).
        normalize: if True, ``a`` and ``b`` are scaled to unit length (zero vectors raise);
            if False they must already be unit length to within ``sqrt(eps)`` of their
            dtype, or a ValueError is raised (the remaining rounding-level excess is
            still removed internally, so ``T`` is orthogonal to working precision).
        degenerate: ``"canonical"`` or ``"raise"``; what to do when the map is not
            determined (``a = b`` for reflection, ``a = −b`` for the others). See the
            module docstring.
        validate: check that ``a`` and ``b`` are finite and nonzero (or, with
            ``normalize=False``, unit length), raising a ValueError otherwise. The checks read
            values back to the host; ``validate=False`` skips them (a non-finite or zero
            vector then gives NaN) so that a call on a GPU does not synchronise, and is
            required on the meta device.

    Returns:
        ``T`` of shape ``(..., d, d)``, a torch tensor for torch ``a`` (autograd flows
        through it) and a NumPy array otherwise, in the promoted dtype of ``a`` and ``b``,
        on ``a``'s device. Computed in float64 (float32 on MPS) whatever the input dtype and
        whether or not autocast is on, then rounded once.

    Example:
        >>> import numpy as np
        >>> from kexue.orthogonal import orthogonal_map
        >>> a, b = np.array([1.0, 2, 3, 4, 5]), np.array([9.0, 8, 7, 6, 5])
        >>> T = orthogonal_map(a, b, kind="symmetric")
        >>> bool(np.allclose(T @ (a / np.linalg.norm(a)), b / np.linalg.norm(b)))
        True
    """
    a_t, a_numpy = as_float_tensor("a", a)
    b_t, _ = as_float_tensor("b", b, like=a_t)
    beta, U, V = low_rank_factors(a_t, b_t, kind=kind, normalize=normalize, degenerate=degenerate, validate=validate)
    d = U.shape[-2]
    eye = torch.eye(d, dtype=U.dtype, device=U.device)
    with autocast_disabled(U):
        T = beta * eye + V @ U.mT  # (..., d, d)
    out_dtype = torch.promote_types(a_t.dtype, b_t.dtype)
    return restore_type(T.to(out_dtype), a_numpy)


@overload
def apply_orthogonal_map(
    x: torch.Tensor,
    a: ArrayInput,
    b: ArrayInput,
    *,
    kind: Kind = ...,
    inverse: bool = ...,
    normalize: bool = ...,
    degenerate: Degenerate = ...,
    validate: bool = ...,
    out: torch.Tensor | None = ...,
) -> torch.Tensor: ...
@overload
def apply_orthogonal_map(
    x: npt.ArrayLike,
    a: ArrayInput,
    b: ArrayInput,
    *,
    kind: Kind = ...,
    inverse: bool = ...,
    normalize: bool = ...,
    degenerate: Degenerate = ...,
    validate: bool = ...,
    out: np.ndarray | None = ...,
) -> np.ndarray: ...
def apply_orthogonal_map(
    x: ArrayInput,
    a: ArrayInput,
    b: ArrayInput,
    *,
    kind: Kind = "reflection",
    inverse: bool = False,
    normalize: bool = True,
    degenerate: Degenerate = "canonical",
    validate: bool = True,
    out: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor | np.ndarray:
    """``T x`` for every vector ``x`` (the rows of ``x``), in O(d) each, without forming ``T``.

    ``y = β x + (x U) Vᵀ``: one matrix-vector pass to get ``x U`` (shape ``(..., r)``,
    ``r ≤ 2``) and one fused update pass. For a single pair ``a, b`` this is two BLAS calls
    (``gemv`` then ``addr``/``addmm``); large CPU outputs are allocated with a huge-page
    hint (see :func:`kexue._shared.empty_like_fast`).

    Args:
        x: vectors to map, shape ``(..., d)``; torch tensor or NumPy array.
        a: source vector(s), shape ``(d,)`` or batched ``(..., d)`` broadcastable
            against ``x``'s leading dimensions.
        b: target vector(s), like ``a``.
        kind: see :func:`orthogonal_map`.
        inverse: apply ``Tᵀ = T⁻¹`` instead (maps ``b`` back to ``a``; equal to ``T`` for
            the two symmetric kinds).
        normalize: see :func:`orthogonal_map`.
        degenerate: see :func:`orthogonal_map`.
        validate: see :func:`orthogonal_map`. For a hot call on a GPU (a map applied to
            every batch) pass ``validate=False`` with ``a`` and ``b`` already on ``x``'s
            device: nothing is then read back to the host (validate once, e.g. with
            :func:`orthogonal_map` or :func:`low_rank_factors` on the first batch).
        out: optional preallocated result of ``x``'s shape and dtype (``out=x`` maps
            in place). Not differentiable.

    Returns:
        ``T x`` in ``x``'s dtype (integers become floating), torch for torch ``x``, else NumPy,
        on ``x``'s device (the meta device gives the shape). The factors are built in float64
        (float32 on MPS) and the O(d) update runs in ``x``'s dtype, with autocast off.
        ``x`` is not checked for NaN: like any linear map, NaN rows stay NaN.

    Example:
        >>> import torch
        >>> from kexue.orthogonal import apply_orthogonal_map
        >>> x = torch.randn(1000, 768)
        >>> mean = x.mean(0)
        >>> target = torch.zeros(768); target[0] = 1.0
        >>> y = apply_orthogonal_map(x, mean, target)  # the mean direction now lies on e_0
        >>> bool(torch.allclose(y.mean(0) / y.mean(0).norm(), target, atol=1e-5))
        True
    """
    x_t, x_numpy = as_float_tensor("x", x)
    a_t, _ = as_float_tensor("a", a, like=x_t)
    b_t, _ = as_float_tensor("b", b, like=x_t)
    _check_x(x_t, a_t)
    beta, U, V = low_rank_factors(a_t, b_t, kind=kind, normalize=normalize, degenerate=degenerate, validate=validate)
    if inverse:
        U, V = V, U
    U, V = U.to(x_t.dtype), V.to(x_t.dtype)
    batch = torch.broadcast_shapes(x_t.shape[:-1], U.shape[:-2])
    out_t = None if out is None else _check_out(out, (*batch, x_t.shape[-1]), x_t, U)
    with autocast_disabled(x_t):
        if U.dim() == 2 and x_t.shape[:-1] == batch:
            y = _apply_shared(x_t, beta, U, V, out_t)
        else:
            y = _apply_batched(x_t, beta, U, V, batch, out_t)
    if out is not None:
        return out
    return restore_type(y, x_numpy)


def _check_x(x: torch.Tensor, a: torch.Tensor) -> None:
    """``x`` is ``(..., d)`` and ``a`` has the same ``d`` (shapes only: no value is read)."""
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (..., d); got a scalar")
    d = x.shape[-1]
    if a.dim() == 0 or a.shape[-1] != d:
        raise ValueError(f"a must have last dimension d = x.shape[-1] = {d}; got a.shape={tuple(a.shape)}")


def _check_out(
    out: torch.Tensor | np.ndarray, shape: tuple[int, ...], x: torch.Tensor, U: torch.Tensor
) -> torch.Tensor:
    """``out`` as a tensor sharing its memory, checked against the result's shape, dtype and device."""
    out_t = out if isinstance(out, torch.Tensor) else _numpy_out(out)
    if tuple(out_t.shape) != shape or out_t.dtype != x.dtype or out_t.device != x.device:
        raise ValueError(
            f"out must have shape {shape}, dtype {x.dtype} and device {x.device}; "
            f"got shape {tuple(out_t.shape)}, dtype {out_t.dtype}, device {out_t.device}"
        )
    if torch.is_grad_enabled() and (x.requires_grad or U.requires_grad):
        raise ValueError("out= is not differentiable; call without out= when x, a or b require grad")
    return out_t


def _numpy_out(out: object) -> torch.Tensor:
    try:
        return torch.from_numpy(out)
    except TypeError as exc:
        raise TypeError(f"out must be a torch.Tensor or a writable NumPy array; got {type(out).__name__}") from exc


def _apply_shared(
    x: torch.Tensor, beta: float, U: torch.Tensor, V: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    """One pair (a, b) for all rows: ``y = β x + (x U) Vᵀ`` as mm + addr/addmm."""
    d = x.shape[-1]
    x2 = x.reshape(-1, d)  # (N, d); a view for contiguous x
    rank_one = U.shape[-1] == 1
    if torch.is_grad_enabled() and (x.requires_grad or U.requires_grad or V.requires_grad):
        coef = x2 @ U  # (N, r)
        y2 = torch.addr(x2, coef[:, 0], V[:, 0], beta=beta) if rank_one else torch.addmm(x2, coef, V.mT, beta=beta)
        return y2.view(x.shape)
    coef = _coefficients(x2, U)  # (N, r)
    direct = out is not None and out.is_contiguous()
    y2 = out.view(-1, d) if out is not None and direct else empty_like_fast(x2)
    if rank_one:
        torch.addr(x2, coef[:, 0], V[:, 0], beta=beta, out=y2)
    else:
        torch.addmm(x2, coef, V.mT, beta=beta, out=y2)
    if out is not None and not direct:
        out.copy_(y2.view(x.shape))
        return out
    return y2.view(x.shape)


def _coefficients(x2: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``x2 @ U`` for ``x2`` (N, d) and ``U`` (d, r), one matrix-vector product per column.

    On the CPU (float32/float64) this goes through NumPy's BLAS: its ``gemv`` read the
    3 GB of a 1,000,000 x 768 float32 ``x`` about 3x faster than ``torch.mv`` (MKL) on the
    development machine (AMD EPYC), and it is the bandwidth-bound half of the apply.
    """
    if x2.device.type != "cpu" or x2.dtype not in (torch.float32, torch.float64):
        return x2 @ U
    xn, un = x2.detach().numpy(), U.detach().numpy()  # only reached without autograd
    columns = [xn @ np.ascontiguousarray(un[:, j]) for j in range(un.shape[1])]
    return torch.from_numpy(np.stack(columns, axis=1))


def _apply_batched(
    x: torch.Tensor,
    beta: float,
    U: torch.Tensor,
    V: torch.Tensor,
    batch: torch.Size,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """Per-vector pairs: ``y = β x + (x U) Vᵀ`` with broadcasting over the leading dims."""
    coef = (x.unsqueeze(-2) @ U).squeeze(-2)  # (*batch, r)
    update = (coef.unsqueeze(-2) @ V.mT).squeeze(-2)  # (*batch, d)
    y = update + x if beta == 1.0 else update - x
    if out is not None:
        return out.copy_(y)
    return y
