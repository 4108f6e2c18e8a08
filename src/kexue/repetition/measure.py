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

__all__ = [
    "Bounds",
    "Estimate",
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


def _q(P):
    return P.multiply(P).tocsr() if sp.issparse(P) else np.asarray(P, dtype=np.float64) ** 2


def spectral_radius(P, tol: float = 1e-12, max_iter: int = 100_000) -> float:
    """``λ₁ = ρ(P ∘ P)`` (Perron root; power iteration, exact for small dense matrices)."""
    return _perron_root(_q(P), tol, max_iter)


def _perron_root(Q, tol: float = 1e-12, max_iter: int = 100_000) -> float:
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
        float(lt),
        float(ld),
        float(ae),
        float(pe),
        float(pp),
        lam1,
        float(sq_rows.min()),
        s_max,
        n * lam1 / (1 - lam1) if lam1 < 1 else math.inf,
        n * s_max / (1 - s_max) if s_max < 1 else math.inf,
        z,
        terms,
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
    """

    value: float
    stderr: float
    probes: int
    terms: int
    exact_terms: float
    method: str = "hutchinson"
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
    from scipy.sparse.csgraph import connected_components

    return connected_components(Q, directed=True, connection="strong")


def _exact_block(Q: sp.csr_array) -> float:
    """``Tr[(I − Q)^{-1}] − m`` of one block by dense LU (``inf`` when its Perron root is 1)."""
    m = Q.shape[0]
    if _perron_root(Q) >= 1 - 1e-12:
        return math.inf
    import scipy.linalg

    inverse = scipy.linalg.solve(
        np.eye(m) - Q.toarray(), np.eye(m), assume_a="gen", overwrite_a=True, check_finite=False
    )
    return float(np.trace(inverse) - m)


def _tail(Q: sp.csr_array, V: np.ndarray, first: int, tol: float, max_terms: int) -> tuple[np.ndarray, int]:
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
        if np.linalg.norm(W) <= tol * max(np.linalg.norm(S), 1e-300):
            break
    return S, k


def power_traces(Q: sp.csr_array, budget: float | None = None, chunk_nnz: float = 4e6, seed: int = 0) -> list[float]:
    """Exact ``Tr Q^k`` for ``k = 1 … 2M``, with ``M`` as large as a ``budget`` of multiplications
    per sparse product allows (estimated on a sample of rows; default ``2·10⁷ + 100 nnz(Q)``, about
    what a hundred probe vectors cost in the stochastic tail, so exact powers are bought where they
    are cheaper than probes):

    .. math:: \\operatorname{Tr} Q^{a+b} = \\sum_i ⟨(Q^a)_{i,:},\\ ((Qᵀ)^b)_{i,:}⟩,

    so ``Tr Q^{2m+1}`` and ``Tr Q^{2m+2}`` come from rows of ``Q^{m+1}`` and of ``(Qᵀ)^m``,
    ``(Qᵀ)^{m+1}``, built a chunk of rows at a time (memory stays bounded). ``M ≥ 1``."""
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

    def __init__(
        self, Q: sp.csr_array, method: str, sketch: int, rng: np.random.Generator, tol: float, max_terms: int
    ) -> None:
        self.Q, self.rng, self.tol, self.max_terms = Q, rng, tol, max_terms
        traces = power_traces(Q)
        self.exact, self.first = float(sum(traces)), len(traces) + 1
        self.values = np.zeros(0)
        self.low, self.basis, self.terms, self.probes = 0.0, None, 0, 0
        if method == "hutch++":  # Meyer et al. 2021: the range of A S carries the dominant (Perron) part exactly
            m = Q.shape[0]
            Y, self.terms = _tail(Q, self._rademacher(min(sketch, m)), self.first, tol, max_terms)
            self.basis = np.linalg.qr(Y)[0]  # (m, s)
            AB, k = _tail(Q, self.basis, self.first, tol, max_terms)
            self.low = float((self.basis * AB).sum())
            self.terms, self.probes = max(self.terms, k), 2 * self.basis.shape[1]

    def _rademacher(self, count: int) -> np.ndarray:
        return self.rng.choice([-1.0, 1.0], size=(self.Q.shape[0], count))

    def add(self, count: int) -> None:
        G = self._rademacher(count)
        if self.basis is not None:
            G -= self.basis @ (self.basis.T @ G)  # probe the residual (I − BBᵀ) A (I − BBᵀ)
        AG, k = _tail(self.Q, G, self.first, self.tol, self.max_terms)
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
        return self.Q.shape[0] * rho ** (self.terms + 1) / (1 - rho)

    @property
    def variance(self) -> float:  # of the mean
        return float(self.values.var(ddof=1)) / len(self.values)


def estimate_r(
    P,
    *,
    rel_error: float | None = 0.005,
    probes: int | None = None,
    max_probes: int = 4096,
    method: str = "hutch++",
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

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.
        rel_error: target relative standard error (default 0.5 %), or ``None``.
        probes: residual probes to start with per large block (default 32; the sketch uses as many).
        max_probes: cap on residual probes over all blocks.
        method: ``"hutch++"`` or ``"hutchinson"``.
        dense_block: blocks up to this size are solved exactly.
        tol, max_terms: truncation of the power series.
        seed: seed of the probes.

    Returns:
        :class:`Estimate`; ``value = inf`` when a block has ``λ₁ ≥ 1`` (a deterministic cycle).
    """
    from kexue._shared import check_choice, check_int, check_number

    if probes is not None:
        check_int("probes", probes, 2)  # the standard error needs two
    probes = 32 if probes is None else probes
    check_int("max_probes", max_probes, 2)
    check_int("max_terms", max_terms, 4)
    check_int("dense_block", dense_block, 1)
    check_number("tol", tol, above=0)
    if rel_error is not None:
        check_number("rel_error", rel_error, above=0)
    check_choice("method", method, ("hutch++", "hutchinson"))
    check_transition(P)
    Q = _q(sp.csr_array(P) if not sp.issparse(P) else sp.csr_array(P))
    count, labels = _components(Q)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    diag = Q.diagonal()
    single = sizes[labels] == 1
    if (diag[single] >= 1 - 1e-12).any():
        return Estimate(math.inf, 0.0, 0, 0, math.inf, method, count, 0)
    exact = float((diag[single] / (1 - diag[single])).sum())
    rng = np.random.default_rng(seed)
    large: list[_Block] = []
    for c in np.flatnonzero(sizes > 1):
        idx = order[starts[c] : starts[c + 1]]
        block = sp.csr_array(Q[idx][:, idx])
        if len(idx) <= dense_block:
            exact += _exact_block(block)
        elif _perron_root(block, tol=1e-10) >= 1 - 1e-9:
            exact = math.inf
        else:
            large.append(_Block(block, method, probes, rng, tol, max_terms))
        if not math.isfinite(exact):
            return Estimate(math.inf, 0.0, 0, 0, math.inf, method, count, 0)
    if not large:
        return Estimate(exact, 0.0, 0, 0, exact, method, count, 0)
    for b in large:
        b.add(probes)
    converged = rel_error is None
    while rel_error is not None:
        value = exact + sum(b.value for b in large)
        variance = sum(b.variance for b in large)
        if math.sqrt(variance) <= rel_error * abs(value):
            converged = True
            break
        used = sum(len(b.values) for b in large)
        if used >= max_probes:
            break
        worst = max(large, key=lambda b: b.variance)
        worst.add(min(len(worst.values), max_probes - used))
    value = exact + sum(b.value for b in large)
    stderr = math.sqrt(sum(b.variance for b in large))
    truncation = sum(b.truncation for b in large)
    return Estimate(
        value,
        stderr,
        sum(b.probes for b in large),
        max(b.terms for b in large),
        exact + sum(b.exact for b in large),
        method,
        count,
        int(sum(b.Q.shape[0] for b in large)),
        converged and truncation <= (rel_error or 0.0) * abs(value),
        truncation,
    )


def perron_vectors(Q, tol: float = 1e-12, max_iter: int = 100_000) -> tuple[float, np.ndarray, np.ndarray]:
    """``(λ₁, v, u)``: the Perron root of the non-negative ``Q`` and its right and left
    eigenvectors (``Q v = λ₁ v``, ``uᵀ Q = λ₁ uᵀ``, both ``≥ 0`` with unit sum), by damped power
    iteration (the damping ``x ← (x + Qx/|Qx|)/2`` also converges on periodic structure)."""

    def iterate(M) -> tuple[float, np.ndarray]:
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
    """Which tokens feed loops (see :func:`inflow`): per-token arrays, each summing to 1."""

    perron: np.ndarray  # u_i v_i / uᵀv: the share of long loops passing through token i
    loop_share: np.ndarray  # [(I − Q)^{-1}]_ii − 1 over R: token i's exact share of R (dense P only)
    lambda1: float


def inflow(P) -> Inflow:
    """Per-token loop inflow of the decoder ``P``.

    ``R = Σ_i r_i`` with ``r_i = Σ_k (Q^k)_ii = [(I − Q)^{-1}]_ii − 1``, the probability mass of
    loops that start (and end) at token ``i``. For long loops ``Q^k ≈ λ₁^k v uᵀ / uᵀv`` (``v``, ``u``
    the right and left Perron vectors of ``Q = P∘P``), so ``(Q^k)_ii / Tr Q^k → u_i v_i / uᵀv``:
    the Perron share says which tokens the dominant loop mode runs through (where ``Q``'s mass
    flows in, ``u``, and out again, ``v``). ``loop_share`` is ``r / R`` exactly (``nan`` when
    ``R = ∞`` or ``P`` is larger than 5,000).
    """
    n = check_transition(P)
    Q = _q(P)
    lam, v, u = perron_vectors(Q)
    weight = u * v
    perron = weight / weight.sum() if weight.sum() > 0 else np.full(n, np.nan)
    share = np.full(n, np.nan)
    if n <= 5000 and lam < 1 - 1e-12:
        import scipy.linalg

        dense = Q.toarray() if sp.issparse(Q) else Q
        r = np.diag(scipy.linalg.solve(np.eye(n) - dense, np.eye(n), check_finite=False)) - 1
        share = r / r.sum()
    return Inflow(perron, share, lam)
