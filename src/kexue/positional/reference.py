"""Float64 oracles for the positional encodings: literal formulas, loops and matrix exponentials.

Nothing here is fast; everything here is obviously the article's mathematics, and the fast
paths in :mod:`kexue.positional.rope` and :mod:`kexue.positional.sinusoidal` are tested
against it.

* ``sinusoidal_reference``: the Transformer's table by a Python loop over ``math.sin``.
* ``generators`` / ``rotation``: RoPE in its general form ``R_p = exp(Σ_k p_k B_k)`` with
  commuting skew-symmetric generators, evaluated by :func:`scipy.linalg.expm` on dense
  ``D × D`` matrices (kexue.fm/archives/8397).
* ``recover_positions``: reads the position back from a rotation matrix (invertibility).
* ``quaternion_rotation``: the construction the article rejects, ``exp(x θ i + y θ j)`` with
  quaternion units acting by left multiplication; ``i`` and ``j`` do not commute.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import linalg

if TYPE_CHECKING:  # the option types only: the oracles do not run the code they check
    from kexue.positional.rope import Layout
    from kexue.positional.sinusoidal import TableLayout

__all__ = [
    "apply_reference",
    "dynamic_ntk_reference",
    "generators",
    "llama3_scaling_reference",
    "pair_indices",
    "plain_half_rotation",
    "quaternion_rotation",
    "recover_positions",
    "rotation",
    "sinusoidal_reference",
    "yarn_regions_reference",
]


def sinusoidal_reference(
    positions: list[float] | np.ndarray, dim: int, *, base: float = 10000.0, layout: TableLayout = "interleaved"
) -> np.ndarray:
    """``p_{k,2i} = sin(k / base^{2i/d})``, ``p_{k,2i+1} = cos(…)`` by loops (``"concat"``: sines then cosines)."""
    rows = []
    for k in np.asarray(positions, dtype=np.float64).reshape(-1):
        sines = [math.sin(k / base ** (2 * i / dim)) for i in range(dim // 2)]
        cosines = [math.cos(k / base ** (2 * i / dim)) for i in range(dim // 2)]
        if layout == "interleaved":
            rows.append([v for pair in zip(sines, cosines, strict=True) for v in pair])
        else:
            rows.append(sines + cosines)
    return np.array(rows, dtype=np.float64)


def pair_indices(rotary_dim: int, layout: Layout) -> list[tuple[int, int]]:
    """Coordinates ``(a_j, b_j)`` of pair ``j``: ``(j, j + R/2)`` (half) or ``(2j, 2j + 1)`` (interleaved)."""
    half = rotary_dim // 2
    if layout == "half":
        return [(j, j + half) for j in range(half)]
    return [(2 * j, 2 * j + 1) for j in range(half)]


def generators(freqs: np.ndarray, dim: int, *, layout: Layout = "half") -> np.ndarray:
    """Skew-symmetric generators ``B_k``: ``B_k[b_j, a_j] = F[k, j] = −B_k[a_j, b_j]``.

    Args:
        freqs: ``F`` of shape ``(axes, R/2)``.
        dim: the full dimension ``D ≥ R`` (coordinates past ``R`` get zero rows: identity).
        layout: the pair layout.

    Returns:
        ``(axes, D, D)`` float64. They commute (block-diagonal with 2×2 blocks on the same pairs).
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    axes, half = freqs.shape
    out = np.zeros((axes, dim, dim))
    for j, (a, b) in enumerate(pair_indices(2 * half, layout)):
        out[:, b, a] = freqs[:, j]
        out[:, a, b] = -freqs[:, j]
    return out


def rotation(position: np.ndarray | list[float], gens: np.ndarray) -> np.ndarray:
    """``R_p = exp(Σ_k p_k B_k)`` by the matrix exponential (float64)."""
    p = np.asarray(position, dtype=np.float64).reshape(-1)
    return linalg.expm(np.tensordot(p, gens, axes=1))


def apply_reference(
    x: np.ndarray, positions: np.ndarray, freqs: np.ndarray, *, layout: Layout = "half", inverse: bool = False
) -> np.ndarray:
    """Row ``t`` of ``x`` ``(T, D)`` times ``R_{p_t}`` (or its transpose), ``positions`` ``(T, axes)``."""
    x = np.asarray(x, dtype=np.float64)
    gens = generators(freqs, x.shape[-1], layout=layout)
    out = np.empty_like(x)
    for t, p in enumerate(np.asarray(positions, dtype=np.float64).reshape(x.shape[0], -1)):
        r = rotation(p, gens)
        out[t] = (r.T if inverse else r) @ x[t]
    return out


def recover_positions(rot: np.ndarray, freqs: np.ndarray, *, layout: Layout = "half") -> np.ndarray:
    """Read ``p`` back from ``R_p`` (invertibility), given the frequencies ``F`` ``(axes, R/2)``.

    Pair ``j``'s block gives ``φ_j = p · F[:, j]`` modulo 2π. Pairs are used from the
    lowest frequency up: the first ones (``|φ_j| < π`` assumed) give a least-squares
    estimate, and each further pair is unwrapped with the current estimate before refining
    it. Needs ``F`` of rank ``axes`` (non-parallel frequency vectors).
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    axes = freqs.shape[0]
    pairs = pair_indices(2 * freqs.shape[1], layout)
    phases = np.array([math.atan2(rot[b, a], rot[a, a]) for a, b in pairs])
    order = np.argsort(np.linalg.norm(freqs, axis=0))
    used: list[int] = []
    unwrapped: list[float] = []
    estimate = np.zeros(axes)
    for j in order:
        if np.linalg.norm(freqs[:, j]) == 0:
            continue
        phase = phases[j]
        if len(used) >= axes and np.linalg.matrix_rank(freqs[:, used].T) == axes:
            phase += 2 * math.pi * round((estimate @ freqs[:, j] - phase) / (2 * math.pi))
        used.append(int(j))
        unwrapped.append(phase)
        estimate = np.linalg.lstsq(freqs[:, used].T, np.array(unwrapped), rcond=None)[0]
    return estimate


_QUATERNION_LEFT = {
    # left multiplication by i and j on (w, x, y, z) = w + x i + y j + z k
    "i": np.array([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, -1], [0, 0, 1, 0]], dtype=np.float64),
    "j": np.array([[0, 0, -1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, -1, 0, 0]], dtype=np.float64),
}


def quaternion_rotation(x: float, y: float, theta: float = 1.0) -> np.ndarray:
    """``exp(x θ i + y θ j)`` acting on quaternions by left multiplication (4×4, orthogonal).

    ``i`` and ``j`` are skew-symmetric but anticommute, so ``R_{x1,y1}ᵀ R_{x2,y2} ≠
    R_{x2−x1, y2−y1}``: the article's negative result.
    """
    return linalg.expm(theta * (x * _QUATERNION_LEFT["i"] + y * _QUATERNION_LEFT["j"]))


def plain_half_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The textbook half-layout rotation evaluated in the tensors' own dtype (every product rounded).

    The yardstick for low-precision fast paths: their error against float64 should not exceed
    about twice this formula's (flash-attention's criterion). ``cos``/``sin``: ``(..., D/2)``.
    """
    half = cos.shape[-1]
    a, b = x[..., :half], x[..., half : 2 * half]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


# --- long-context scalings, one pair at a time, in Python floats (float64) ---------------------


def llama3_scaling_reference(
    j: int, dim: int, base: float, factor: float, low: float, high: float, original: float
) -> float:
    """Llama 3.1's published rule for pair ``j``: keep short wavelengths, divide long ones by
    ``factor``, blend by ``(original/λ − low)/(high − low)`` in between."""
    theta = base ** (-2 * j / dim)
    wavelength = 2 * math.pi / theta
    if wavelength < original / high:
        return theta
    if wavelength > original / low:
        return theta / factor
    w = (original / wavelength - low) / (high - low)
    return (1 - w) * theta / factor + w * theta


def yarn_regions_reference(j: int, dim: int, base: float, original: float, beta_fast: float, beta_slow: float) -> str:
    """YaRN (arXiv 2309.00071, §3.2) by the number of turns ``r = L₀ θ_j / 2π`` of pair ``j``
    over the original length: ``"kept"`` when ``r > β_fast``, ``"interpolated"`` when
    ``r < β_slow``, else ``"ramp"``."""
    turns = original * base ** (-2 * j / dim) / (2 * math.pi)
    if turns > beta_fast:
        return "kept"
    if turns < beta_slow:
        return "interpolated"
    return "ramp"


def dynamic_ntk_reference(j: int, dim: int, base: float, factor: float, length: int, trained: int) -> float:
    """Dynamic NTK: at a length beyond the trained one the base grows to
    ``base (s L / L₀ − s + 1)^(R/(R−2))``; at or below it nothing changes."""
    if length > trained:
        base = base * (factor * length / trained - (factor - 1)) ** (dim / (dim - 2))
    return base ** (-2 * j / dim)
