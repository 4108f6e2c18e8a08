"""Plain float64 NumPy oracles for whitening: the article's formulas, nothing clever.

Reference: Su Jianlin, "You may not need BERT-flow: a linear transformation matches BERT-flow",
https://kexue.fm/archives/8069; Su et al., "Whitening Sentence Representations for Better
Semantics and Faster Retrieval", arXiv:2103.15316.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["mean_covariance", "running_statistics", "whitening_reference"]


def mean_covariance(x: npt.ArrayLike, *, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``μ`` and ``Σ = (1/(N - ddof)) Σ_i (x_i - μ)ᵀ(x_i - μ)`` in float64, two passes.

    Args:
        x: the rows, ``(N, d)``.
        ddof: the covariance divides by ``N - ddof``.

    Returns:
        ``(μ (d,), Σ (d, d))``.

    Example:
        >>> mean_covariance([[0.0, 1.0], [2.0, 3.0]])
        (array([1., 2.]), array([[1., 1.],
               [1., 1.]]))
    """
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - ddof)


def running_statistics(x: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The spec's one-sample recurrences for μ and Σ (ddof 0), applied row by row.

    ``μ_{n+1} = n/(n+1) μ_n + x/(n+1)``;
    ``Σ_{n+1} = n/(n+1) (Σ_n + μ_nᵀμ_n) + xᵀx/(n+1) - μ_{n+1}ᵀμ_{n+1}``.

    Args:
        x: the rows, ``(N, d)``.

    Returns:
        ``(μ (d,), Σ (d, d))`` after the last row.
    """
    x = np.asarray(x, dtype=np.float64)
    mu = np.zeros(x.shape[1])
    sigma = np.zeros((x.shape[1], x.shape[1]))
    for n, row in enumerate(x):
        new_mu = n / (n + 1) * mu + row / (n + 1)
        sigma = n / (n + 1) * (sigma + np.outer(mu, mu)) + np.outer(row, row) / (n + 1) - np.outer(new_mu, new_mu)
        mu = new_mu
    return mu, sigma


def whitening_reference(
    x: npt.ArrayLike, *, n_components: int | None = None, beta: float = 1.0, gamma: float = 1.0, ddof: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel ``W = U_k Λ_k^(-γ/2)`` and bias ``β μ`` so that ``x~ = (x - βμ) W``.

    Columns of ``U`` are ordered by decreasing eigenvalue, each column's sign fixed so that its
    largest-magnitude entry is positive (the same convention as :class:`Whitening`).

    Args:
        x: the rows, ``(N, d)``.
        n_components: ``k`` (default: all ``d``).
        beta: the share of the mean subtracted.
        gamma: the power of the rescaling.
        ddof: the covariance divides by ``N - ddof``.

    Returns:
        ``(W (d, k), βμ (d,))``.
    """
    mu, sigma = mean_covariance(x, ddof=ddof)
    lam, u = np.linalg.eigh(sigma)
    order = np.argsort(lam)[::-1]
    lam, u = lam[order], u[:, order]
    u = u * np.sign(u[np.abs(u).argmax(0), np.arange(u.shape[1])])
    k = u.shape[1] if n_components is None else n_components
    return u[:, :k] * lam[:k] ** (-gamma / 2), beta * mu
