"""The repetition measure of a bigram decoder and its bounds (kexue.fm/archives/8128).

A loop ``[w₁ … w_k]`` followed by itself has probability ``(P_{w₁w₂} ⋯ P_{w_kw₁})²``; summing
over all loops of all lengths gives, with ``Q = P ∘ P`` (element-wise square),

.. math:: R = \\sum_{k \\ge 1} \\operatorname{Tr} Q^k = \\operatorname{Tr}[(I − Q)^{−1} − I]
          = \\sum_i \\frac{λ_i}{1 − λ_i},

with ``λ_i`` the eigenvalues of ``Q``. The series converges when ``λ₁ = ρ(Q) < 1``; a decoder
with a deterministic cycle (greedy decoding always has one) has ``λ₁ = 1`` and ``R = ∞``.

Bounds (``ζ`` = fraction of non-zero entries of ``P``, ``B`` its non-zero pattern):

* lower, proven (Cauchy–Schwarz over the closed walks of length ``k``):
  ``R ≥ Σ_k (Tr P^k)² / Tr B^k`` and, per starting token, ``R ≥ Σ_k Σ_i (P^k)_ii² / (B^k)_ii``;
  every partial sum is a bound (all terms are ≥ 0);
* lower, the article's estimates, which replace the walk counts by ``ζ^k n^k`` (resp.
  ``ζ^k n^(k−1)``): ``Σ_k (Tr P^k)² / (ζ n)^k`` and the original paper's corrected form
  ``Σ_k Tr(P^k ∘ P^k) / (ζ^k n^(k−1))``, where the paper printed ``Tr P^(2k)``;
  heuristic, so reported with their actual error, not as bounds;
* upper, proven: ``R ≤ n λ₁ / (1 − λ₁)`` (every ``|λ_i| ≤ λ₁``), and ``λ₁ ≤ max_i Σ_j P_ij²``
  (Perron–Frobenius row-sum bound; ``min_i Σ_j P_ij² ≤ λ₁``, and ``Σ_j P_ij² ≥ 1/n``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from kexue.repetition.transition import check_transition

__all__ = ["Bounds", "Estimate", "bounds", "estimate_r", "exact_r", "r_eigen", "r_series", "zeta"]


def _q(P):
    return P.multiply(P).tocsr() if sp.issparse(P) else np.asarray(P, dtype=np.float64) ** 2


def spectral_radius(P, tol: float = 1e-12, max_iter: int = 100_000) -> float:
    """``λ₁ = ρ(P ∘ P)`` (Perron root; power iteration, exact for small dense matrices)."""
    Q = _q(P)
    n = Q.shape[0]
    if not sp.issparse(Q) and n <= 300:
        return float(np.abs(np.linalg.eigvals(Q)).max())
    x = np.full(n, 1.0 / n)
    lam = 0.0
    for _ in range(max_iter):
        y = Q @ x
        new = float(y.sum())  # x ≥ 0 with sum 1: the Collatz-Wielandt average
        if new == 0:
            return 0.0
        y /= new
        if abs(new - lam) < tol * max(new, 1e-300) and np.abs(y - x).max() < 1e-9:
            return new
        x, lam = 0.5 * (x + y), new  # damped: converges for periodic (cyclic) patterns too
    return lam


def exact_r(P) -> float:
    """``R = Tr[(I − Q)^{−1} − I]`` by one dense LU (float64, ``n`` up to a few thousand);
    ``inf`` when ``λ₁ = 1``."""
    n = check_transition(P)
    if spectral_radius(P) >= 1 - 1e-12:
        return math.inf
    Q = _q(P)
    Q = Q.toarray() if sp.issparse(Q) else Q
    import scipy.linalg

    inverse = scipy.linalg.solve(np.eye(n) - Q, np.eye(n), assume_a="gen", overwrite_a=True, check_finite=False)
    return float(np.trace(inverse) - n)


def r_series(P, terms: int) -> float:
    """The truncated series ``Σ_{k=1}^{terms} Tr Q^k`` (a lower bound of ``R``, converging to it)."""
    check_transition(P)
    Q = _q(P)
    total, power = 0.0, Q
    for _ in range(terms):
        total += float(power.diagonal().sum())
        power = power @ Q
    return total


def r_eigen(P) -> float:
    """``Σ λ_i / (1 − λ_i)`` over the eigenvalues of ``Q`` (dense)."""
    check_transition(P)
    Q = _q(P)
    lam = np.linalg.eigvals(Q.toarray() if sp.issparse(Q) else Q)
    if np.abs(lam).max() >= 1 - 1e-12:
        return math.inf
    return float(np.real((lam / (1 - lam)).sum()))


def zeta(P) -> float:
    """Fraction of non-zero entries of ``P``."""
    nnz = P.count_nonzero() if sp.issparse(P) else int(np.count_nonzero(P))
    return nnz / (P.shape[0] * P.shape[1])


@dataclass
class Bounds:
    """Bounds and estimates of ``R`` (see the module docstring); ``terms`` powers summed."""

    lower_trace: float  # proven: Σ (Tr P^k)² / Tr B^k
    lower_diagonal: float  # proven: Σ_k Σ_i (P^k)_ii² / (B^k)_ii
    article_estimate: float  # Σ (Tr P^k)² / (ζ n)^k
    paper_estimate: float  # Σ Σ_i (P^k)_ii² / (ζ^k n^(k-1))  (the corrected elementwise form)
    paper_printed: float  # Σ Tr P^(2k) / (ζ^k n^(k-1))  (the form the paper printed)
    lambda1: float
    row_sum_min: float
    row_sum_max: float
    upper_lambda: float  # proven: n λ₁ / (1 − λ₁)
    upper_row_sum: float  # proven: n s / (1 − s), s = max row sum of squares
    zeta: float
    terms: int


def bounds(P, terms: int = 20, rtol: float = 1e-12) -> Bounds:
    """Every bound and estimate of the module docstring, summing up to ``terms`` powers (dense);
    stops early once a power adds less than ``rtol`` (relative) to every sum."""
    n = check_transition(P)
    dense = P.toarray() if sp.issparse(P) else np.asarray(P, dtype=np.float64)
    B = (dense > 0).astype(np.float64)
    z = zeta(dense)
    sq_rows = (dense**2).sum(axis=1)
    lam1 = spectral_radius(dense)
    lt = ld = ae = pe = pp = 0.0
    Pk, Bk, log_scale = np.eye(n), np.eye(n), 0.0  # B^k = Bk · e^log_scale (walk counts grow like (ζn)^k)
    for k in range(1, terms + 1):
        Pk, Bk = Pk @ dense, Bk @ B
        top = Bk.max()
        Bk /= top
        log_scale += math.log(top)
        diag, bdiag = np.diag(Pk), np.diag(Bk)
        tr, btr = diag.sum(), bdiag.sum()
        if btr > 0:
            lt += tr**2 / btr * math.exp(-log_scale)
        live = bdiag > 0
        ld += float((diag[live] ** 2 / bdiag[live]).sum()) * math.exp(-log_scale)
        before = (lt, ld)
        add_ae = tr**2 / (z * n) ** k
        add_pe = (diag**2).sum() / (z**k * n ** (k - 1))
        add_pp = float((Pk * Pk.T).sum()) / (z**k * n ** (k - 1))  # Tr P^(2k) = Σ_ij (P^k)_ij (P^k)_ji
        ae, pe, pp = ae + add_ae, pe + add_pe, pp + add_pp
        small = [new - old <= rtol * max(new, 1e-300) for new, old in zip((lt, ld), before)]
        if k >= 3 and all(small) and add_ae <= rtol * max(ae, 1e-300) and add_pe <= rtol * max(pe, 1e-300) \
                and add_pp <= rtol * max(pp, 1e-300):
            terms = k
            break
    s_max = float(sq_rows.max())
    return Bounds(float(lt), float(ld), float(ae), float(pe), float(pp), lam1, float(sq_rows.min()), s_max,
                  n * lam1 / (1 - lam1) if lam1 < 1 else math.inf, n * s_max / (1 - s_max) if s_max < 1 else math.inf, z, terms)


@dataclass
class Estimate:
    """Stochastic estimate of ``R`` with its standard error."""

    value: float
    stderr: float
    probes: int
    terms: int
    exact_terms: float  # Tr Q + Tr Q² computed exactly


def estimate_r(P, *, probes: int = 64, tol: float = 1e-10, max_terms: int = 10_000, seed: int = 0) -> Estimate:
    """``R`` for large sparse ``P``: ``Tr Q + Tr Q²`` exactly, the rest of the series
    ``Σ_{k≥3} Tr Q^k`` by Hutchinson's estimator (Rademacher probes, ``z_iᵀ Q^k z_i``),
    powers applied until the tail is below ``tol`` relative. The standard error is over probes.

    Needs ``λ₁ < 1`` (``inf`` is returned when the power iteration finds ``λ₁ ≥ 1``)."""
    from kexue._shared import check_int, check_number

    check_int("probes", probes, 2)  # the standard error needs two
    check_int("max_terms", max_terms, 1)
    check_number("tol", tol, above=0)
    n = check_transition(P)
    Q = _q(sp.csr_array(P) if not sp.issparse(P) else P)
    if spectral_radius(P) >= 1 - 1e-9:
        return Estimate(math.inf, 0.0, 0, 0, math.inf)
    exact = float(Q.diagonal().sum()) + float(Q.multiply(Q.T).sum())
    rng = np.random.default_rng(seed)
    Z = rng.choice([-1.0, 1.0], size=(n, probes))
    V = Q @ (Q @ Z)
    per_probe = np.zeros(probes)
    k = 2
    while k < max_terms:
        V = Q @ V
        k += 1
        term = (Z * V).sum(axis=0)
        per_probe += term
        if np.abs(term).mean() <= tol * max(abs(exact + per_probe.mean()), 1e-300):
            break
    return Estimate(exact + float(per_probe.mean()), float(per_probe.std(ddof=1) / math.sqrt(probes)), probes, k, exact)
