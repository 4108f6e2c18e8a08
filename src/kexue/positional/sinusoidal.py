"""Sinusoidal position encodings (Vaswani et al. 2017) and the article's analysis of them.

The table: ``p_{k,2i} = sin(k θ_i)``, ``p_{k,2i+1} = cos(k θ_i)`` with ``θ_i = base^{−2i/d}``.
The article (kexue.fm/archives/8231) derives it as the solution of ``⟨p_m, p_n⟩ = g(m − n)``:

    ⟨p_m, p_n⟩ = Σ_{i<d/2} cos((m − n) θ_i) ≈ (d/2) ∫_0^1 cos((m − n) θ_t) dt,   θ_t = base^{−t},

a left Riemann sum of an oscillatory integral, which tends to 0 as ``|m − n|`` grows (long-range
decay). For the exponential schedule the integral has a closed form through the cosine integral
``Ci``: substituting ``u = Δ base^{−t}`` gives ``(Ci(Δ) − Ci(Δ/base)) / ln(base)``. Other
schedules (power laws ``t^α``, other bases) are integrated numerically.

References:
    Su Jianlin, "Transformer upgrade road 1: tracing sinusoidal position encoding to its roots",
    https://kexue.fm/archives/8231. Vaswani et al., Attention is all you need, arXiv:1706.03762.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from scipy import special

from kexue._shared import as_real_array, check_choice, check_finite, check_number
from kexue.positional.rope import _check_base, _check_rotary_dim, rope_frequencies

__all__ = [
    "TABLE_LAYOUTS",
    "THETA_SCHEDULES",
    "TableLayout",
    "ThetaSchedule",
    "exponential_schedule",
    "integral_approximation",
    "power_schedule",
    "relative_inner_products",
    "sinusoidal_table",
    "sinusoidal_table_nd",
]

TableLayout = Literal["interleaved", "concat"]
TABLE_LAYOUTS: tuple[TableLayout, ...] = get_args(TableLayout)


def _positions(
    positions: Any, angle_dtype: torch.dtype, device: torch.device | str | None = None, validate: bool = True
) -> tuple[torch.Tensor, bool]:
    """Positions as an ``angle_dtype`` tensor; an int ``n`` means ``0 … n−1`` (on ``device``).
    Finiteness is checked (a read back to the host) only when ``validate`` and not on the meta device."""
    if angle_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"angle_dtype={angle_dtype} is not supported; accepted: torch.float32, torch.float64")
    if isinstance(positions, bool):
        raise TypeError("positions must be an int (a length), a tensor or an array of positions; got bool")
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(f"positions={positions} must be >= 0 when given as a length")
        return torch.arange(positions, dtype=angle_dtype, device=device), False
    was_numpy = not isinstance(positions, torch.Tensor)
    tensor = torch.from_numpy(as_real_array("positions", positions)) if was_numpy else positions
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"positions must be real numbers; got dtype {tensor.dtype}")
    if validate and tensor.is_floating_point() and not tensor.is_meta:  # integers are finite: nothing to read
        check_finite("positions", tensor)
    return tensor.to(angle_dtype), was_numpy


def sinusoidal_table(
    positions: Any,
    dim: int,
    *,
    base: float = 10000.0,
    layout: TableLayout = "interleaved",
    dtype: torch.dtype | None = None,
    angle_dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    validate: bool = True,
) -> Any:
    """Sinusoidal encodings of arbitrary (integer, fractional, offset) positions.

    Angles ``k θ_i`` and their sines are computed in ``angle_dtype`` (float64 by default)
    and rounded once to ``dtype``, so a bfloat16 table is the correctly rounded table.
    The table is made on the positions' device (``device`` for an int length; the meta
    device gives a meta table); elementwise products keep autocast out of the angles.

    Args:
        positions: an int ``n`` (positions ``0 … n−1``), or a tensor / array of positions of
            any shape (a NumPy input gives a NumPy output).
        dim: encoding dimension ``d`` (even).
        base: 10000 in the Transformer.
        layout: ``"interleaved"`` — ``(sin θ_0 k, cos θ_0 k, sin θ_1 k, …)`` as in the paper;
            ``"concat"`` — all sines then all cosines (tensor2tensor, fairseq).
        dtype: output dtype (default ``torch.get_default_dtype()``).
        angle_dtype: float64 or float32.
        device: where a table of an int length is made (tensor positions keep their device).
        validate: check that tensor positions are finite, which reads a value back to the
            host (a GPU synchronisation); ``False`` reads nothing.

    Returns:
        ``(*S, d)`` for positions ``(*S)``: a tensor, or a NumPy array for NumPy positions.

    Example:
        >>> sinusoidal_table(4, 8).shape
        torch.Size([4, 8])
    """
    dim = _check_rotary_dim("dim", dim)
    base = _check_base(base)
    check_choice("layout", layout, TABLE_LAYOUTS)
    p, was_numpy = _positions(positions, angle_dtype, device, validate)
    angles = p.unsqueeze(-1) * rope_frequencies(dim, base=base, dtype=angle_dtype, device=p.device)  # (*S, d/2)
    sin, cos = angles.sin(), angles.cos()
    table = torch.stack((sin, cos), dim=-1).flatten(-2) if layout == "interleaved" else torch.cat((sin, cos), dim=-1)
    table = table.to(dtype or torch.get_default_dtype())
    return table.numpy() if was_numpy else table


def sinusoidal_table_nd(
    positions: Any,
    dim: int,
    *,
    base: float = 10000.0,
    split: Sequence[int] | None = None,
    layout: TableLayout = "interleaved",
    dtype: torch.dtype | None = None,
    angle_dtype: torch.dtype = torch.float64,
    validate: bool = True,
) -> Any:
    """N-D sinusoidal tables (e.g. 2-D for image patches, as in MAE): one 1-D table per axis, concatenated.

    Args:
        positions: ``(..., n)`` coordinates (``n`` axes), e.g. ``grid_positions(h, w)``.
        dim: total dimension; axis ``k`` gets ``split[k]`` of it (default ``dim / n`` each;
            every share must be even).
        base, layout, dtype, angle_dtype: as in :func:`sinusoidal_table`.
        split: the dimension of each axis's table.
        validate: as in :func:`sinusoidal_table`.

    Returns:
        ``(..., dim)`` (NumPy for NumPy positions).

    Example:
        >>> sinusoidal_table_nd(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), 8).shape
        torch.Size([2, 8])
    """
    dim = _check_rotary_dim("dim", dim)
    p, was_numpy = _positions(positions, angle_dtype, validate=validate)
    if p.dim() < 1 or p.shape[-1] < 1:
        raise ValueError(f"positions must have shape (..., n_axes); got {tuple(p.shape)}")
    axes = p.shape[-1]
    if split is None:
        if dim % (2 * axes):
            raise ValueError(
                f"dim={dim} does not split into {axes} even shares, one per axis of positions "
                f"(positions.shape[-1]={axes}); pass split="
            )
        split = [dim // axes] * axes
    split = list(split)
    if len(split) != axes or sum(split) != dim:
        raise ValueError(f"split={split!r} must list {axes} even dimensions summing to dim={dim}")
    for share in split:
        _check_rotary_dim("split entry", share)
    parts = [
        sinusoidal_table(
            p[..., k], share, base=base, layout=layout, dtype=dtype, angle_dtype=angle_dtype, validate=False
        )
        for k, share in enumerate(split)
    ]
    table = torch.cat(parts, dim=-1)
    return table.numpy() if was_numpy else table


# --- analysis -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThetaSchedule:
    """A frequency schedule ``θ_t`` on ``t ∈ [0, 1]``: frequency ``i`` of ``d/2`` is ``θ_{2i/d}``.

    Attributes:
        name: label for tables and plots.
        theta: vectorised ``t ↦ θ_t`` on NumPy arrays.
        exact: optional closed form of ``∫_0^1 cos(Δ θ_t) dt`` (vectorised over ``Δ``).
    """

    name: str
    theta: Callable[[np.ndarray], np.ndarray]
    exact: Callable[[np.ndarray], np.ndarray] | None = None


def exponential_schedule(base: float = 10000.0) -> ThetaSchedule:
    """``θ_t = base^{−t}`` (the Transformer's, base 10000), with the closed-form integral.

    Args:
        base: the schedule's base, above 1.

    Returns:
        The :class:`ThetaSchedule`.
    """
    base = _check_base(base)
    log_base = math.log(base)

    def exact(delta: np.ndarray) -> np.ndarray:
        delta = np.abs(np.asarray(delta, dtype=np.float64))
        out = np.ones_like(delta)
        nz = delta > 0
        out[nz] = (special.sici(delta[nz])[1] - special.sici(delta[nz] / base)[1]) / log_base
        return out

    return ThetaSchedule(f"{base:g}^(-t)", lambda t: base ** (-np.asarray(t, dtype=np.float64)), exact)


def power_schedule(alpha: float) -> ThetaSchedule:
    """``θ_t = t^α`` (α > 0): a power law reaching frequencies down to 0.

    Args:
        alpha: the exponent ``α``.

    Returns:
        The :class:`ThetaSchedule` (with the closed form ``sin Δ / Δ`` for ``α = 1``).
    """
    alpha = check_number("alpha", alpha, above=0)

    def exact(delta: np.ndarray) -> np.ndarray:
        # ∫_0^1 cos(Δ t^α) dt: only α = 1 is elementary (sin Δ / Δ); others are numeric
        delta = np.abs(np.asarray(delta, dtype=np.float64))
        return np.where(delta > 0, np.sinc(delta / np.pi), 1.0)

    return ThetaSchedule(
        f"t^{alpha:g}", lambda t: np.asarray(t, dtype=np.float64) ** alpha, exact if alpha == 1 else None
    )


# name -> factory(parameter) -> ThetaSchedule
THETA_SCHEDULES: dict[str, Callable[[float], ThetaSchedule]] = {
    "exponential": exponential_schedule,
    "power": power_schedule,
}


def _schedule(schedule: ThetaSchedule | float | None, base: float) -> ThetaSchedule:
    if schedule is None:
        return exponential_schedule(base)
    if not isinstance(schedule, ThetaSchedule):
        raise TypeError(f"schedule must be a ThetaSchedule (e.g. power_schedule(2)); got {type(schedule).__name__}")
    return schedule


def _distances(distances: Any) -> np.ndarray:
    array = as_real_array("distances", distances)
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"distances contains {int((~np.isfinite(array)).sum())} non-finite value(s); finite distances are required"
        )
    return array


def relative_inner_products(
    distances: Any, dim: int, *, base: float = 10000.0, schedule: ThetaSchedule | None = None
) -> np.ndarray:
    """``g(Δ) = ⟨p_m, p_{m+Δ}⟩ = Σ_{i<d/2} cos(Δ θ_{2i/d})`` exactly (float64).

    Any ``m`` gives the same value: that independence is the relativity the article asks
    for, and :func:`sinusoidal_table` satisfies it (checked in ``kexue reproduce``).

    Args:
        distances: relative distances ``Δ`` (an array-like of real numbers, finite).
        dim: the encoding dimension ``d`` (even).
        base: the exponential schedule's base (when ``schedule`` is None).
        schedule: another frequency schedule (:func:`power_schedule`, ...).

    Returns:
        float64 array of the shape of ``distances``.

    Example:
        >>> float(relative_inner_products([0.0], 8)[0])
        4.0
    """
    dim = _check_rotary_dim("dim", dim)
    sched = _schedule(schedule, base)
    delta = _distances(distances)
    theta = sched.theta(np.arange(0, dim, 2, dtype=np.float64) / dim)  # (d/2,)
    flat = delta.reshape(-1, 1)
    out = np.empty(flat.shape[0])
    for start in range(0, flat.shape[0], 4096):  # bounded memory for long distance ranges
        out[start : start + 4096] = np.cos(flat[start : start + 4096] * theta).sum(axis=1)
    return out.reshape(delta.shape)


def integral_approximation(
    distances: Any,
    dim: int,
    *,
    base: float = 10000.0,
    schedule: ThetaSchedule | None = None,
    nodes: int = 1 << 16,
) -> np.ndarray:
    """The article's continuum limit ``(d/2) ∫_0^1 cos(Δ θ_t) dt`` (= ``(d/2) Re ∫ e^{iΔθ_t} dt``).

    Uses the schedule's closed form when it has one (the exponential schedule: cosine
    integrals), otherwise composite Gauss–Legendre quadrature with ``nodes`` points (panels
    of 16), accurate while ``Δ · max θ`` stays well below ``nodes``.

    Args:
        distances: relative distances ``Δ`` (an array-like of real numbers, finite).
        dim: the encoding dimension ``d`` (even).
        base: the exponential schedule's base (when ``schedule`` is None).
        schedule: another frequency schedule (:func:`power_schedule`, ...).
        nodes: quadrature points when the schedule has no closed form.

    Returns:
        float64 array of the shape of ``distances``.

    Example:
        >>> float(integral_approximation([0.0], 128)[0])
        64.0
    """
    dim = _check_rotary_dim("dim", dim)
    sched = _schedule(schedule, base)
    delta = _distances(distances)
    if sched.exact is not None:
        return dim / 2 * sched.exact(delta)
    panels = max(1, nodes // 16)
    x, w = np.polynomial.legendre.leggauss(16)
    edges = np.linspace(0.0, 1.0, panels + 1)
    half = np.diff(edges)[:, None] / 2
    t = ((edges[:-1, None] + edges[1:, None]) / 2 + half * x).reshape(-1)
    weights = (half * w).reshape(-1)
    theta = sched.theta(t)
    flat = delta.reshape(-1, 1)
    out = np.empty(flat.shape[0])
    for start in range(0, flat.shape[0], 256):
        out[start : start + 256] = np.cos(flat[start : start + 256] * theta) @ weights
    return (dim / 2 * out).reshape(delta.shape)
