"""Plain, obviously-correct orthogonal maps: the article's formulas written out literally.

This module is the oracle the fast path (:mod:`kexue.orthogonal.maps`) is tested against.
It forms the dense ``d x d`` matrix, works on single (unbatched) NumPy vectors, and
evaluates every formula exactly as printed, in the dtype requested, so it also shows
where the printed formulas lose precision (near ``a = b`` or ``a = -b``).

With ``cos θ = a·b`` for unit ``a, b``:

* rotation    ``T = I + 2 b aᵀ − (a + b)(a + b)ᵀ / (1 + cos θ)``      (det +1)
* reflection  ``T = I − 2 v vᵀ,  v = (a − b) / ‖a − b‖``           (Householder, det −1)
* symmetric   ``T = (a + b)(a + b)ᵀ / (1 + cos θ) − I``              (the article's final answer)

and the construction they all come from: with ``q1 = a``,
``q2 = (b − a cos θ) / ‖b − a cos θ‖`` and ``Q = [q1 q2]``,
``T = Q R Qᵀ + (I − Q Qᵀ)`` for a 2 x 2 rotation or reflection ``R`` taking
``(1, 0)`` to ``(cos θ, sin θ)``. The symmetric form is ``−1`` times the reflection
that takes ``a`` to ``−b``.

References:
    Su Jianlin, "从一个单位向量变换到另一个单位向量的正交矩阵" (The orthogonal matrix that
    maps one unit vector to another), Scientific Spaces, 2021-06-05, https://kexue.fm/archives/8453
    A. S. Householder, "Unitary triangularization of a nonsymmetric matrix", J. ACM 5(4), 1958.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from kexue.orthogonal.maps import KINDS, Kind

__all__ = ["CLOSED_FORMS", "DEGENERATE_SIGN", "closed_form", "near_degenerate_pair", "plane_construction", "unit"]


def unit(u: npt.ArrayLike, *, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """``u / ‖u‖`` in ``dtype``.

    Args:
        u: a vector.
        dtype: the dtype the vector is converted to and normalised in.

    Returns:
        The unit vector, a NumPy array of ``dtype``.
    """
    u = np.asarray(u, dtype=dtype)
    return u / np.sqrt(u @ u)


# b = sign * a is where each kind's closed form divides by zero
DEGENERATE_SIGN: dict[Kind, float] = {"reflection": 1.0, "rotation": -1.0, "symmetric": -1.0}


def near_degenerate_pair(rng: np.random.Generator, d: int, *, kind: Kind, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Random unit ``a`` and unit ``b`` at angle ``gap`` from ``kind``'s degenerate point ``±a`` (float64).

    Args:
        rng: the random generator.
        d: the dimension.
        kind: whose degenerate point: ``b = a`` for ``"reflection"``, ``b = −a`` otherwise.
        gap: the angle between ``b`` and the degenerate point, in radians.

    Returns:
        ``(a, b)``, float64 unit vectors of shape ``(d,)``.
    """
    a = unit(rng.standard_normal(d))
    p = rng.standard_normal(d)
    p = unit(p - (p @ a) * a)
    return a, DEGENERATE_SIGN[kind] * a * np.cos(gap) + p * np.sin(gap)


def _rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    eye = np.eye(a.shape[0], dtype=a.dtype)
    s = a + b
    return eye + 2 * np.outer(b, a) - np.outer(s, s) / (1 + a @ b)


def _reflection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    eye = np.eye(a.shape[0], dtype=a.dtype)
    v = (a - b) / np.sqrt((a - b) @ (a - b))
    return eye - 2 * np.outer(v, v)


def _symmetric(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    eye = np.eye(a.shape[0], dtype=a.dtype)
    s = a + b
    return np.outer(s, s) / (1 + a @ b) - eye


CLOSED_FORMS: dict[Kind, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "rotation": _rotation,
    "reflection": _reflection,
    "symmetric": _symmetric,
}


def closed_form(a: npt.ArrayLike, b: npt.ArrayLike, *, kind: Kind, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """The article's closed form for ``kind``, evaluated as printed in ``dtype``.

    ``a`` and ``b`` are normalised (in ``dtype``) first. Degenerate inputs produce
    whatever the formula produces (inf/NaN from a division by zero): this is the oracle,
    not the library.

    Args:
        a: the source vector ``(d,)``.
        b: the target vector ``(d,)``.
        kind: which closed form.
        dtype: the dtype the formula is evaluated in.

    Returns:
        ``T``, a ``(d, d)`` NumPy array of ``dtype``.

    Example:
        >>> import numpy as np
        >>> T = closed_form([1.0, 0.0], [0.0, 1.0], kind="reflection")
        >>> T @ np.array([1.0, 0.0])  # the printed formula rounds: 2.2e-16 instead of 0
        array([2.22044605e-16, 1.00000000e+00])
    """
    a, b = unit(a, dtype=dtype), unit(b, dtype=dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        return CLOSED_FORMS[kind](a, b)


def plane_construction(a: npt.ArrayLike, b: npt.ArrayLike, *, kind: Kind) -> np.ndarray:
    """``Q R Qᵀ + (I − Q Qᵀ)`` in float64, the derivation the closed forms come from.

    Args:
        a: the source vector ``(d,)``.
        b: the target vector ``(d,)``; requires ``a ≠ ±b`` (the plane must be defined).
        kind: which map.

    Returns:
        ``T``, a ``(d, d)`` float64 NumPy array.

    Raises:
        ValueError: ``a = ±b``, or an unknown ``kind``.
    """
    a, b = unit(a), unit(b)
    d = a.shape[0]
    c = float(a @ b)
    r = b - c * a
    r_norm = np.sqrt(r @ r)
    if r_norm == 0.0:
        raise ValueError("plane_construction needs a != ±b: span{a, b} is not a plane")
    q = np.stack([a, r / r_norm], axis=1)  # (d, 2)
    s = r_norm  # sin θ ≥ 0 in this basis
    rest = np.eye(d) - q @ q.T
    rotation = np.array([[c, -s], [s, c]])
    mirror = np.array([[c, s], [s, -c]])
    if kind == "rotation":
        return q @ rotation @ q.T + rest
    if kind == "reflection":
        return q @ mirror @ q.T + rest
    if kind == "symmetric":
        # reflect a onto -b inside the plane (mirror for the angle to -b), then negate everything
        to_minus_b = np.array([[-c, -s], [-s, c]])
        return -(q @ to_minus_b @ q.T + rest)
    raise ValueError(f"kind={kind!r} is not supported; accepted values: {', '.join(map(repr, KINDS))}")
