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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from kexue._shared import check_choice, check_int, check_number
from kexue.repetition.transition import MatrixLike, as_dense, check_transition

__all__ = [
    "ESTIMATE_METHODS",
    "Bounds",
    "Estimate",
    "EstimateMethod",
    "Inflow",
    "bounds",
    "estimate_r",
    "exact_r",
    "inflow",
    "perron_vectors",
    "r_eigen",
    "r_series",
    "zeta",
]


EstimateMethod = Literal["hutch++", "hutchinson"]
ESTIMATE_METHODS: tuple[EstimateMethod, ...] = get_args(EstimateMethod)


def _squared(P: MatrixLike) -> Any:
    """``Q = P ∘ P``, the element-wise square: CSR for a sparse ``P``, else a float64 array."""
    sparse: Any = P  # scipy.sparse ships no types
    return sparse.multiply(sparse).tocsr() if sp.issparse(P) else np.asarray(P, dtype=np.float64) ** 2


def spectral_radius(P: MatrixLike, *, tol: float = 1e-12, max_iter: int = 100_000) -> float:
    """``λ₁ = ρ(P ∘ P)`` (Perron root; power iteration, exact for small dense matrices).

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.
        tol: relative change of the root at which the power iteration stops.
        max_iter: most power-iteration steps.

    Returns:
        ``λ₁``.
    """
    return _perron_root(_squared(P), tol, max_iter)


def _perron_root(Q: Any, tol: float = 1e-12, max_iter: int = 100_000) -> float:
    """``ρ(Q)`` of a non-negative matrix (eigenvalues up to 300, else damped power iteration)."""
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


def exact_r(P: MatrixLike) -> float:
    """``R = Tr[(I − Q)^{−1} − I]`` by one dense LU (float64, ``n`` up to a few thousand).

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.

    Returns:
        ``R``; ``inf`` when ``λ₁ = 1`` (a deterministic cycle).

    Example:
        >>> import numpy as np
        >>> round(exact_r(np.array([[0.5, 0.5], [0.5, 0.5]])), 6)  # Q = P∘P has eigenvalues 1/2 and 0
        1.0
    """
    n = check_transition(P)
    if spectral_radius(P) >= 1 - 1e-12:
        return math.inf
    Q = _squared(P)
    Q = Q.toarray() if sp.issparse(Q) else Q
    inverse = scipy.linalg.solve(np.eye(n) - Q, np.eye(n), assume_a="gen", overwrite_a=True, check_finite=False)
    return float(np.trace(inverse) - n)


def r_series(P: MatrixLike, *, terms: int) -> float:
    """The truncated series ``Σ_{k=1}^{terms} Tr Q^k`` (a lower bound of ``R``, converging to it).

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.
        terms: powers summed.

    Returns:
        The partial sum.
    """
    check_transition(P)
    Q = _squared(P)
    total, power = 0.0, Q
    for _ in range(terms):
        total += float(power.diagonal().sum())
        power = power @ Q
    return total


def r_eigen(P: MatrixLike) -> float:
    """``Σ λ_i / (1 − λ_i)`` over the eigenvalues of ``Q`` (dense).

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.

    Returns:
        ``R`` (``inf`` when ``λ₁ = 1``).
    """
    check_transition(P)
    Q = _squared(P)
    lam = np.linalg.eigvals(Q.toarray() if sp.issparse(Q) else Q)
    if np.abs(lam).max() >= 1 - 1e-12:
        return math.inf
    return float(np.real((lam / (1 - lam)).sum()))


def zeta(P: MatrixLike) -> float:
    """Fraction of non-zero entries of ``P``.

    Args:
        P: a dense or sparse matrix.

    Returns:
        ``ζ``.
    """
    M: Any = P  # scipy.sparse ships no types
    nnz = M.count_nonzero() if sp.issparse(M) else int(np.count_nonzero(M))
    return nnz / (M.shape[0] * M.shape[1])


@dataclass
class Bounds:
    """Bounds and estimates of ``R`` (see the module docstring); ``terms`` powers summed.

    Args:
        lower_trace: proven, ``Σ (Tr P^k)² / Tr B^k``.
        lower_diagonal: proven, ``Σ_k Σ_i (P^k)_ii² / (B^k)_ii``.
        article_estimate: ``Σ (Tr P^k)² / (ζ n)^k``.
        paper_estimate: ``Σ Σ_i (P^k)_ii² / (ζ^k n^(k-1))`` (the corrected elementwise form).
        paper_printed: ``Σ Tr P^(2k) / (ζ^k n^(k-1))`` (the form the paper printed).
        lambda1: ``λ₁ = ρ(P∘P)``.
        row_sum_min: the smallest row sum of squares.
        row_sum_max: the largest row sum of squares.
        upper_lambda: proven, ``n λ₁ / (1 − λ₁)``.
        upper_row_sum: proven, ``n s / (1 − s)``, ``s`` the largest row sum of squares.
        zeta: ``ζ``, the fraction of non-zero entries.
        terms: powers summed.
    """

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


def bounds(P: MatrixLike, *, terms: int = 20, rtol: float = 1e-12) -> Bounds:
    """Every bound and estimate of the module docstring, summing up to ``terms`` powers (dense).

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse (densified).
        terms: the most powers summed.
        rtol: stop early once a power adds less than this (relative) to every sum.

    Returns:
        :class:`Bounds`.

    Example:
        >>> import numpy as np
        >>> b = bounds(np.array([[0.5, 0.5], [0.5, 0.5]]))
        >>> b.lower_trace <= 1.0 <= b.upper_lambda  # R = 1 here
        True
    """
    n = check_transition(P)
    dense = as_dense(P)
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
        small = [new - old <= rtol * max(new, 1e-300) for new, old in zip((lt, ld), before, strict=True)]
        if (
            k >= 3
            and all(small)
            and add_ae <= rtol * max(ae, 1e-300)
            and add_pe <= rtol * max(pe, 1e-300)
            and add_pp <= rtol * max(pp, 1e-300)
        ):
            terms = k
            break
    s_max = float(sq_rows.max())
    return Bounds(
        lower_trace=float(lt),
        lower_diagonal=float(ld),
        article_estimate=float(ae),
        paper_estimate=float(pe),
        paper_printed=float(pp),
        lambda1=lam1,
        row_sum_min=float(sq_rows.min()),
        row_sum_max=s_max,
        upper_lambda=n * lam1 / (1 - lam1) if lam1 < 1 else math.inf,
        upper_row_sum=n * s_max / (1 - s_max) if s_max < 1 else math.inf,
        zeta=z,
        terms=terms,
    )


@dataclass
class Estimate:
    """An estimate of ``R`` with its standard error (``value ± stderr``).

    ``exact_terms`` is the part computed exactly (every small strongly connected block, and
    ``Tr Q + Tr Q²`` of the large ones); the rest is the stochastic trace estimate of the large
    blocks' tails. ``probes``: probe vectors used (all blocks, sketch included); ``terms``: the
    most powers of ``Q`` summed; ``blocks``: strongly connected components of ``Q``;
    ``stochastic_tokens``: tokens in blocks estimated stochastically (0: the value is exact);
    ``converged``: whether the requested relative error was reached and no power series was
    cut at ``max_terms``; ``truncation``: a bound on what such a cut left out
    (``m ρ^(K+1) / (1 − ρ)`` per block of ``m`` tokens with Perron root ``ρ``, cut after ``K``
    powers; 0 when nothing was cut). The standard error does not include it.

    Args:
        value: the estimate of ``R``.
        stderr: its standard error.
        probes: probe vectors used.
        terms: the most powers of ``Q`` summed.
        exact_terms: the part computed exactly.
        method: the stochastic trace estimator.
        blocks: strongly connected components of ``Q``.
        stochastic_tokens: tokens in blocks estimated stochastically.
        converged: whether the requested relative error was reached and nothing was cut.
        truncation: a bound on what a cut power series left out.
    """

    value: float
    stderr: float
    probes: int
    terms: int
    exact_terms: float
    method: EstimateMethod = "hutchinson"
    blocks: int = 1
    stochastic_tokens: int = 0
    converged: bool = True
    truncation: float = 0.0

    @property
    def relative_error(self) -> float:
        """``stderr / |value|`` (0 for an exact value)."""
        return self.stderr / abs(self.value) if self.value and math.isfinite(self.value) else 0.0

    def __float__(self) -> float:
        return self.value


def _components(Q: sp.csr_array) -> tuple[int, np.ndarray]:
    """The strongly connected components of ``Q``'s pattern: their count and each token's label."""
    count, labels = connected_components(Q, directed=True, connection="strong")
    return int(count), labels


def _exact_block(Q: sp.csr_array) -> float:
    """``Tr[(I − Q)^{-1}] − m`` of one block by dense LU (``inf`` when its Perron root is 1)."""
    m = Q.shape[0]
    if _perron_root(Q) >= 1 - 1e-12:
        return math.inf
    inverse = scipy.linalg.solve(
        np.eye(m) - Q.toarray(), np.eye(m), assume_a="gen", overwrite_a=True, check_finite=False
    )
    return float(np.trace(inverse) - m)


def _power_tail(Q: sp.csr_array, V: np.ndarray, first: int, tol: float, max_terms: int) -> tuple[np.ndarray, int]:
    """``Σ_{k=first}^{K} Q^k V``, powers added until the latest is below ``tol`` (relative,
    Frobenius) or ``K = max_terms`` (the caller checks ``K`` to know whether it was cut)."""
    W = V
    for _ in range(first):
        W = Q @ W
    S, k = W.copy(), first
    while k < max_terms:
        W = Q @ W
        S += W
        k += 1
        if np.linalg.norm(W) <= tol * max(float(np.linalg.norm(S)), 1e-300):
            break
    return S, k


def power_traces(Q: sp.csr_array, *, budget: float | None = None, chunk_nnz: float = 4e6, seed: int = 0) -> list[float]:
    """Exact ``Tr Q^k`` for ``k = 1 … 2M``, with ``M`` as large as a ``budget`` of multiplications
    per sparse product allows (estimated on a sample of rows; default ``2·10⁷ + 100 nnz(Q)``, about
    what a hundred probe vectors cost in the stochastic tail, so exact powers are bought where they
    are cheaper than probes):

    .. math:: \\operatorname{Tr} Q^{a+b} = \\sum_i ⟨(Q^a)_{i,:},\\ ((Qᵀ)^b)_{i,:}⟩,

    so ``Tr Q^{2m+1}`` and ``Tr Q^{2m+2}`` come from rows of ``Q^{m+1}`` and of ``(Qᵀ)^m``,
    ``(Qᵀ)^{m+1}``, built a chunk of rows at a time (memory stays bounded). ``M ≥ 1``.

    Args:
        Q: the non-negative sparse matrix.
        budget: multiplications allowed per sparse product.
        chunk_nnz: non-zeros per chunk of rows.
        seed: seed of the row sample.

    Returns:
        ``[Tr Q, Tr Q², …, Tr Q^{2M}]``.
    """
    n = Q.shape[0]
    budget = 2e7 + 100 * Q.nnz if budget is None else budget
    QT = sp.csr_array(Q.T)
    traces = [float(Q.diagonal().sum()), float(Q.multiply(QT).sum())]
    per_row = max(Q.nnz, QT.nnz) / max(n, 1)
    sample = np.random.default_rng(seed).choice(n, size=min(n, 256), replace=False)
    R, L, depth = Q[sample], QT[sample], 1
    while depth < 16:
        grown = max(R.nnz, L.nnz) / len(sample)  # non-zeros a row of Q^depth
        if grown >= n or n * grown * per_row > budget:  # dense already, or the next product too dear
            break
        R, L, depth = R @ Q, L @ QT, depth + 1
    if depth == 1:
        return traces
    traces += [0.0] * (2 * depth - 2)
    rows = max(1, int(chunk_nnz / max(per_row ** min(depth, 4), 1)))
    for lo in range(0, n, rows):
        R, L = Q[lo : lo + rows], QT[lo : lo + rows]
        for m in range(1, depth):
            R = sp.csr_array(R @ Q)
            traces[2 * m] += float(R.multiply(L).sum())  # Tr Q^(2m+1)
            L = sp.csr_array(L @ QT)
            traces[2 * m + 1] += float(R.multiply(L).sum())  # Tr Q^(2m+2)
    return traces


class _Block:
    """One large block: ``Tr Q^k`` exactly for ``k < first`` (:func:`power_traces`), the tail
    ``Tr Σ_{k≥first} Q^k`` as sketched part + residual probes."""

    Q: sp.csr_array
    rng: np.random.Generator
    tol: float
    max_terms: int
    exact: float  # Σ Tr Q^k for k < first
    first: int  # the first power of the stochastic tail
    values: np.ndarray  # one value per residual probe
    low: float  # Tr(Bᵀ A B): the sketched part (0 for Hutchinson)
    basis: np.ndarray | None  # B, the orthonormal sketch basis (None for Hutchinson)
    terms: int
    probes: int

    def __init__(
        self, Q: sp.csr_array, method: EstimateMethod, sketch: int, rng: np.random.Generator, tol: float, max_terms: int
    ) -> None:
        self.Q, self.rng, self.tol, self.max_terms = Q, rng, tol, max_terms
        traces = power_traces(Q)
        self.exact, self.first = float(sum(traces)), len(traces) + 1
        self.values = np.zeros(0)
        self.low, self.basis, self.terms, self.probes = 0.0, None, 0, 0
        if method == "hutch++":  # Meyer et al. 2021: the range of A S carries the dominant (Perron) part exactly
            m = Q.shape[0]
            Y, self.terms = _power_tail(Q, self._rademacher(min(sketch, m)), self.first, tol, max_terms)
            basis = np.linalg.qr(Y)[0]  # (m, s)
            AB, k = _power_tail(Q, basis, self.first, tol, max_terms)
            self.basis, self.low = basis, float((basis * AB).sum())
            self.terms, self.probes = max(self.terms, k), 2 * basis.shape[1]

    def _rademacher(self, count: int) -> np.ndarray:
        return self.rng.choice([-1.0, 1.0], size=(self.Q.shape[0], count))

    def add(self, count: int) -> None:
        G = self._rademacher(count)
        if self.basis is not None:
            G -= self.basis @ (self.basis.T @ G)  # probe the residual (I − BBᵀ) A (I − BBᵀ)
        AG, k = _power_tail(self.Q, G, self.first, self.tol, self.max_terms)
        self.values = np.concatenate([self.values, (G * AG).sum(axis=0)])
        self.terms, self.probes = max(self.terms, k), self.probes + count

    @property
    def value(self) -> float:
        return self.exact + self.low + float(self.values.mean())

    @property
    def truncation(self) -> float:
        """A bound on the series cut at ``max_terms``: ``Σ_{k>K} |Tr Q^k| ≤ m ρ^(K+1)/(1 − ρ)``."""
        if self.terms < self.max_terms:
            return 0.0
        rho = _perron_root(self.Q, tol=1e-10)
        return float(self.Q.shape[0] * rho ** (self.terms + 1) / (1 - rho))

    @property
    def variance(self) -> float:  # of the mean
        return float(self.values.var(ddof=1)) / len(self.values)


def estimate_r(
    P: MatrixLike,
    *,
    rel_error: float | None = 0.005,
    probes: int | None = None,
    max_probes: int = 4096,
    method: EstimateMethod = "hutch++",
    dense_block: int = 1000,
    tol: float = 1e-10,
    max_terms: int = 10_000,
    seed: int = 0,
) -> Estimate:
    """``R`` for large sparse ``P``, to a requested relative standard error.

    Exact structure first: order the tokens by the strongly connected components of ``Q = P∘P``
    (the condensation is a DAG, so ``I − Q`` is block-triangular) and

    .. math:: \\operatorname{Tr}(I − Q)^{-1} = \\sum_B \\operatorname{Tr}(I − Q_{BB})^{-1},

    the sum over the diagonal blocks ``Q_BB``: a transient token alone in its block costs
    ``q/(1 − q)`` (``q = Q_ii``), a block of up to ``dense_block`` tokens one dense LU. A larger
    block gets ``Tr Q_BB + Tr Q_BB²`` exactly and the tail ``Tr A``, ``A = Σ_{k≥3} Q_BB^k``
    (powers applied to blocks of vectors until the latest is below ``tol``), stochastically:

    * ``method="hutch++"`` (default; Meyer, Musco, Musco, Woodruff 2021, arXiv 2010.09649):
      ``Tr A = Tr(Bᵀ A B) + Tr((I − BBᵀ) A (I − BBᵀ))`` with ``B`` an orthonormal basis of ``A S``
      for ``s`` Rademacher vectors ``S``; the first part is exact given ``B`` and holds the slowly
      decaying Perron part, the second is estimated with Rademacher probes (unbiased for any
      square ``A``, as ``Tr((I − BBᵀ) A BBᵀ) = 0``);
    * ``method="hutchinson"``: plain Rademacher probes ``zᵀ A z`` (Hutchinson 1989).

    The standard error is that of the probe mean (conditional on the sketch, which is what the
    estimate's error is given the sketch), summed in quadrature over blocks. Probes are added
    (doubling, to the block with the largest variance) until ``stderr ≤ rel_error · R`` or
    ``max_probes`` are used; ``rel_error=None`` uses ``probes`` and stops.

    A dense ``P`` (NumPy, torch) is read in float64, as :func:`exact_r` reads it; a sparse one keeps its dtype.

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.
        rel_error: target relative standard error (default 0.5 %), or ``None``.
        probes: residual probes to start with per large block (default 32; the sketch uses as many).
        max_probes: cap on residual probes over all blocks.
        method: ``"hutch++"`` or ``"hutchinson"``.
        dense_block: blocks up to this size are solved exactly.
        tol: truncation of the power series (relative size of the latest power).
        max_terms: the most powers of the series summed.
        seed: seed of the probes.

    Returns:
        :class:`Estimate`; ``value = inf`` when a block has ``λ₁ ≥ 1`` (a deterministic cycle).

    Example:
        >>> import numpy as np
        >>> est = estimate_r(np.array([[0.5, 0.5], [0.5, 0.5]]))  # one small block: solved exactly
        >>> round(est.value, 6), est.stderr
        (1.0, 0.0)
    """
    _check_estimate_options(probes, max_probes, max_terms, dense_block, tol, rel_error, method)
    start = 32 if probes is None else probes
    check_transition(P)
    Q = _squared(sp.csr_array(P) if sp.issparse(P) else sp.csr_array(as_dense(P)))
    count, labels = _components(Q)
    rng = np.random.default_rng(seed)
    exact, large = _split_blocks(
        Q, labels, count, dense_block, lambda block: _Block(block, method, start, rng, tol, max_terms)
    )
    if not large:  # every block solved exactly (or one has λ₁ ≥ 1: R = ∞)
        return Estimate(value=exact, stderr=0.0, probes=0, terms=0, exact_terms=exact, method=method, blocks=count)
    for b in large:
        b.add(start)
    converged = _add_probes(large, exact, rel_error, max_probes)
    return _combine(large, exact, method=method, blocks=count, converged=converged, rel_error=rel_error)


def _check_estimate_options(
    probes: int | None,
    max_probes: int,
    max_terms: int,
    dense_block: int,
    tol: float,
    rel_error: float | None,
    method: EstimateMethod,
) -> None:
    """The checks of :func:`estimate_r`'s options (errors name the option)."""
    if probes is not None:
        check_int("probes", probes, 2)  # the standard error needs two
    check_int("max_probes", max_probes, 2)
    check_int("max_terms", max_terms, 4)
    check_int("dense_block", dense_block, 1)
    check_number("tol", tol, above=0)
    if rel_error is not None:
        check_number("rel_error", rel_error, above=0)
    check_choice("method", method, ESTIMATE_METHODS)


def _split_blocks(
    Q: sp.csr_array, labels: np.ndarray, count: int, dense_block: int, make: Callable[[sp.csr_array], _Block]
) -> tuple[float, list[_Block]]:
    """The exact part of ``Tr[(I − Q)^{-1} − I]`` (tokens alone in their block, and blocks of up to
    ``dense_block`` tokens) and the larger blocks, built by ``make``; ``(inf, [])`` as soon as a block
    has Perron root 1."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    diag = Q.diagonal()
    single = sizes[labels] == 1
    if (diag[single] >= 1 - 1e-12).any():
        return math.inf, []
    exact = float((diag[single] / (1 - diag[single])).sum())
    large: list[_Block] = []
    for c in np.flatnonzero(sizes > 1):
        idx = order[starts[c] : starts[c + 1]]
        block = sp.csr_array(Q[idx][:, idx])
        if len(idx) <= dense_block:
            exact += _exact_block(block)
        elif _perron_root(block, tol=1e-10) >= 1 - 1e-9:
            exact = math.inf
        else:
            large.append(make(block))
        if not math.isfinite(exact):
            return math.inf, []
    return exact, large


def _add_probes(large: list[_Block], exact: float, rel_error: float | None, max_probes: int) -> bool:
    """Add probes (doubling, to the block with the largest variance) until the standard error is at most
    ``rel_error`` of the value or ``max_probes`` are used; whether the target was reached (``True`` for
    ``rel_error=None``: no target)."""
    while rel_error is not None:
        value = exact + sum(b.value for b in large)
        variance = sum(b.variance for b in large)
        if math.sqrt(variance) <= rel_error * abs(value):
            return True
        used = sum(len(b.values) for b in large)
        if used >= max_probes:
            return False
        worst = max(large, key=lambda b: b.variance)
        worst.add(min(len(worst.values), max_probes - used))
    return True


def _combine(
    large: list[_Block], exact: float, *, method: EstimateMethod, blocks: int, converged: bool, rel_error: float | None
) -> Estimate:
    """The :class:`Estimate` of the exact part plus the stochastic blocks."""
    value = exact + sum(b.value for b in large)
    truncation = sum(b.truncation for b in large)
    return Estimate(
        value=value,
        stderr=math.sqrt(sum(b.variance for b in large)),
        probes=sum(b.probes for b in large),
        terms=max(b.terms for b in large),
        exact_terms=exact + sum(b.exact for b in large),
        method=method,
        blocks=blocks,
        stochastic_tokens=int(sum(b.Q.shape[0] for b in large)),
        converged=converged and truncation <= (rel_error or 0.0) * abs(value),
        truncation=truncation,
    )


def perron_vectors(Q: Any, *, tol: float = 1e-12, max_iter: int = 100_000) -> tuple[float, np.ndarray, np.ndarray]:
    """``(λ₁, v, u)``: the Perron root of the non-negative ``Q`` and its right and left
    eigenvectors (``Q v = λ₁ v``, ``uᵀ Q = λ₁ uᵀ``, both ``≥ 0`` with unit sum), by damped power
    iteration (the damping ``x ← (x + Qx/|Qx|)/2`` also converges on periodic structure).

    Args:
        Q: a non-negative square matrix, dense or sparse.
        tol: relative change of the root at which the iteration stops.
        max_iter: most iteration steps.

    Returns:
        ``(λ₁, v, u)``.
    """

    def iterate(M: Any) -> tuple[float, np.ndarray]:
        n = M.shape[0]
        x, lam = np.full(n, 1.0 / n), 0.0
        for _ in range(max_iter):
            y = M @ x
            new = float(y.sum())
            if new == 0:
                return 0.0, x
            y /= new
            if abs(new - lam) < tol * new and np.abs(y - x).max() < 1e-11:
                return new, y
            x, lam = 0.5 * (x + y), new
        return lam, x

    lam, v = iterate(Q)
    _, u = iterate(Q.T)
    return lam, v, u


@dataclass
class Inflow:
    """Which tokens feed loops (see :func:`inflow`): per-token arrays, each summing to 1.

    Args:
        perron: ``u_i v_i / uᵀv``, the share of long loops passing through token ``i``.
        loop_share: ``[(I − Q)^{-1}]_ii − 1`` over ``R``, token ``i``'s exact share of ``R``.
        lambda1: ``λ₁ = ρ(P∘P)``.
    """

    perron: np.ndarray  # u_i v_i / uᵀv: the share of long loops passing through token i
    loop_share: np.ndarray  # [(I − Q)^{-1}]_ii − 1 over R: token i's exact share of R (dense P only)
    lambda1: float


def inflow(P: MatrixLike) -> Inflow:
    """Per-token loop inflow of the decoder ``P``.

    ``R = Σ_i r_i`` with ``r_i = Σ_k (Q^k)_ii = [(I − Q)^{-1}]_ii − 1``, the probability mass of
    loops that start (and end) at token ``i``. For long loops ``Q^k ≈ λ₁^k v uᵀ / uᵀv`` (``v``, ``u``
    the right and left Perron vectors of ``Q = P∘P``), so ``(Q^k)_ii / Tr Q^k → u_i v_i / uᵀv``:
    the Perron share says which tokens the dominant loop mode runs through (where ``Q``'s mass
    flows in, ``u``, and out again, ``v``). ``loop_share`` is ``r / R`` exactly (``nan`` when
    ``R = ∞`` or ``P`` is larger than 5,000).

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.

    Returns:
        :class:`Inflow`.

    Example:
        >>> import numpy as np
        >>> flow = inflow(np.array([[0.9, 0.1], [0.5, 0.5]]))
        >>> [round(float(x), 3) for x in flow.loop_share]  # token 0 holds most of R
        [0.924, 0.076]
    """
    n = check_transition(P)
    Q = _squared(P)
    lam, v, u = perron_vectors(Q)
    weight = u * v
    perron = weight / weight.sum() if weight.sum() > 0 else np.full(n, np.nan)
    share = np.full(n, np.nan)
    if n <= 5000 and lam < 1 - 1e-12:
        dense = Q.toarray() if sp.issparse(Q) else Q
        r = np.diag(scipy.linalg.solve(np.eye(n) - dense, np.eye(n), check_finite=False)) - 1
        share = r / r.sum()
    return Inflow(perron=perron, loop_share=share, lambda1=lam)
