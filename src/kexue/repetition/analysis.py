"""Putting the pieces together: R per decoding rule, simulated decoding, rebalanced encoding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from kexue.repetition.measure import bounds, estimate_r, exact_r, spectral_radius, zeta
from kexue.repetition.transition import Decoding, apply_decoding

__all__ = ["DENSE_LIMIT", "RuleReport", "analyze", "dry_penalised", "merge_pair", "r_with_dry", "rebalance", "simulate"]

DENSE_LIMIT = 5000


@dataclass
class RuleReport:
    rule: str
    r: float
    r_stderr: float  # 0 when exact
    method: str
    lambda1: float
    zeta: float
    lower: float  # proven, per-token form (dense only; nan otherwise)
    article_estimate: float
    upper: float  # proven, n λ₁ / (1 − λ₁)
    note: str = ""  # why a bound is missing (nan), if one is


def _missing_bounds(lam: float, z: float, n: int) -> tuple[float, str]:
    """The value of a bound that is not summed (``inf`` or ``nan``) and why, in words."""
    if lam >= 1 - 1e-12 and round(z * n, 9) == 1:
        return math.inf, (
            "deterministic decoder (one successor a token, ζn = 1): every cycle of length c adds at least "
            "c to the lower bound and c² to the article's estimate at each multiple k of c: both are ∞, like R"
        )
    if lam >= 1 - 1e-12:
        return math.nan, "λ₁ = 1, R = ∞: nothing to bound, bounds not summed"
    return math.nan, "bounds need dense powers of P: computed up to n = 2,000"


def analyze(P, rules: Sequence[Decoding], *, terms: int = 30, probes: int = 32, seed: int = 0) -> list[RuleReport]:
    """R (exact up to ``DENSE_LIMIT`` tokens, else :func:`~kexue.repetition.measure.estimate_r` to 0.5 %
    standard error), λ₁, ζ and bounds per rule. Where a bound is ``nan``, ``note`` says why: a
    deterministic decoder (greedy) has ``λ₁ = 1`` and ``R = ∞``, and its ζ-based estimates diverge."""
    n = P.shape[0]
    rows = []
    for rule in rules:
        D = apply_decoding(P, rule)
        lam = spectral_radius(D)
        if n <= DENSE_LIMIT:
            r, se, method = exact_r(D), 0.0, "exact"
            b = bounds(D, terms=terms) if n <= 2000 and lam < 1 - 1e-12 else None  # R = ∞: nothing to bound
        else:
            est = estimate_r(D if sp.issparse(D) else sp.csr_array(D), probes=probes, seed=seed)
            r, se, b = est.value, est.stderr, None
            method = (
                f"{est.method} ({est.probes} probes, {est.blocks:,} blocks)"
                if est.stochastic_tokens
                else "exact (blocks)"
            )
        upper = n * lam / (1 - lam) if lam < 1 - 1e-12 else math.inf
        z = zeta(D)
        missing, note = (math.nan, "") if b else _missing_bounds(lam, z, n)
        rows.append(
            RuleReport(
                str(rule),
                r,
                se,
                method,
                lam,
                z,
                b.lower_diagonal if b else missing,
                b.article_estimate if b else missing,
                upper,
                note,
            )
        )
    return rows


DRY_MAX_TOKENS = 2000  # dry_penalised is O(n³) in time and holds dense n × n copies


def dry_penalised(P, rule: Decoding | str, delta: float) -> np.ndarray:
    """``G[i, j]``: the probability of ``j`` after ``i`` when ``j``'s logit is lowered by ``delta``
    and then ``rule`` is applied (row ``i`` of ``P`` with entry ``j`` times ``e^(−delta)``,
    renormalised, decoded): DRY's effect on the one token that would extend a repeat, in
    llama.cpp's order (DRY before top-k, top-p, temperature)."""
    n = P.shape[0]
    if n > DRY_MAX_TOKENS:
        raise ValueError(
            f"P has {n} tokens: dry_penalised decodes one dense copy of P per token (O(n³)), so it accepts at "
            f"most {DRY_MAX_TOKENS}; restrict P to the tokens that matter (e.g. a character-level model)"
        )
    dense = P.toarray() if sp.issparse(P) else np.asarray(P, dtype=np.float64)
    G = np.zeros_like(dense)
    factor = math.exp(-delta)
    for j in np.flatnonzero(dense.any(axis=0)):
        scaled = dense.copy()
        scaled[:, j] *= factor
        scaled /= scaled.sum(axis=1, keepdims=True)
        D = apply_decoding(scaled, rule, sparse=False)
        G[:, j] = D[:, j]
    return G


def r_with_dry(
    P,
    rule: Decoding | str,
    *,
    multiplier: float,
    base: float = 1.75,
    allowed_length: int = 2,
    tol: float = 1e-13,
    max_terms: int = 5000,
) -> float:
    """The article's R for decoding ``P`` with ``rule`` after DRY (``multiplier``, ``base``,
    ``allowed_length``; no sequence breakers), on the article's event itself.

    The event is a cycle ``w₁ … w_k`` followed by ``w₁ … w_k, w₁``. Its first walk is plain
    decoding, ``D = rule(P)``. On the second walk, when ``w_{j+1}`` is chosen the text ends with
    ``w₁ … w_j``, a repeat of length ``j`` whose continuation is ``w_{j+1}``, so DRY lowers that
    logit by ``δ_j = multiplier · base^(j − allowed_length)`` once ``j ≥ allowed_length`` (the
    event's own text; no earlier context). With ``G_δ`` = :func:`dry_penalised`,

    .. math:: R_{DRY} = \\sum_{k≥1} \\operatorname{Tr}(M_1 M_2 ⋯ M_k),\\qquad
              M_j = D ∘ G_{δ_j}\\ (M_j = D ∘ D = Q \\text{ for } j < \\text{allowed\\_length}),

    since the probability of one cycle is ``Π_j D_{w_j w_{j+1}} · Π_j (G_{δ_j})_{w_j w_{j+1}}``.
    What this leaves out: DRY also penalises other tokens that extend shorter repeats (they only
    change the renormalisation), repeats inside the first walk (a cycle that revisits a token),
    and context before the cycle; sequence breakers would cap ``j``. Greedy decoding, ``R = ∞``
    alone, gets a finite value: a cycle survives the second walk only while its next token stays
    the arg-max after the penalty. ``inf`` if the products do not vanish within ``max_terms``
    (a row with a single possible successor cannot be penalised away).
    """
    from kexue._shared import check_int, check_number

    check_number("multiplier", multiplier, above=0)
    check_number("base", base)
    if base < 1:
        raise ValueError(f"base={base!r} must be >= 1")
    check_int("allowed_length", allowed_length, 1)
    D = apply_decoding(P, rule, sparse=False)
    D = D.toarray() if sp.issparse(D) else D
    product, total = np.eye(D.shape[0]), 0.0
    cache: dict[float, np.ndarray] = {}
    for j in range(1, max_terms + 1):
        if j < allowed_length:
            M = D * D
        else:
            delta = multiplier * base ** min(j - allowed_length, 700)
            if delta > 745:  # e^(−δ) underflows: the penalised token is gone unless it is alone in its row
                delta = 745.0
            if delta not in cache:
                cache[delta] = D * dry_penalised(P, rule, delta)
            M = cache[delta]
        product = product @ M
        total += float(np.trace(product))
        if j >= allowed_length and product.sum() <= tol * max(total, 1e-300):
            return total
    return math.inf


def simulate(P, *, sequences: int, length: int, seed: int = 0, start: np.ndarray | None = None) -> np.ndarray:
    """``(sequences, length)`` token ids sampled from the Markov chain ``P`` (start tokens drawn
    from the stationary-ish unigram of the rows' targets unless given)."""
    dense = P.toarray() if sp.issparse(P) else np.asarray(P)
    n = dense.shape[0]
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(dense, axis=1)
    cdf[:, -1] = 1.0
    out = np.empty((sequences, length), dtype=np.int64)
    if start is None:
        weights = dense.sum(axis=0)
        start = rng.choice(n, size=sequences, p=weights / weights.sum())
    out[:, 0] = start
    for t in range(1, length):
        u = rng.random(sequences)
        out[:, t] = (cdf[out[:, t - 1]] < u[:, None]).sum(axis=1)
    return np.minimum(out, n - 1)


def merge_pair(ids: np.ndarray, a: int, b: int, new: int) -> np.ndarray:
    """Replace non-overlapping occurrences of ``a b`` (left to right) by ``new``."""
    hits = np.flatnonzero((ids[:-1] == a) & (ids[1:] == b))
    if a == b and len(hits):  # runs "a a a": take every other start
        keep, last = [], -2
        for h in hits.tolist():
            if h > last + 1:
                keep.append(h)
                last = h
        hits = np.array(keep, dtype=np.int64)
    if not len(hits):
        return ids
    drop = np.zeros(len(ids), dtype=bool)
    drop[hits + 1] = True
    out = ids.copy()
    out[hits] = new
    return out[~drop]


@dataclass
class Rebalanced:
    ids: np.ndarray
    tokens: list[str]
    merges: list[tuple[str, str, float]]


def rebalance(
    ids: np.ndarray, tokens: list[str], *, gamma: float = 0.5, max_merges: int = 200, min_count: int = 20
) -> Rebalanced:
    """Rebalanced encoding (Fu et al. 2021): repeatedly merge the pair ``(i, j)`` with the
    highest transition probability ``P_ij > gamma`` (seen at least ``min_count`` times) into a
    new token, re-estimating the counts after each merge."""
    from kexue._shared import check_int, check_number

    check_number("gamma", gamma, above=0)
    check_int("max_merges", max_merges, 0)
    ids, tokens, merges = ids.copy(), list(tokens), []
    for _ in range(max_merges):
        n = len(tokens)
        pair = ids[:-1] * n + ids[1:]
        counts = np.bincount(pair, minlength=n * n).reshape(n, n).astype(np.float64)
        totals = counts.sum(axis=1, keepdims=True)
        prob = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        prob[counts < min_count] = 0
        i, j = np.unravel_index(int(prob.argmax()), prob.shape)
        if prob[i, j] <= gamma:
            break
        merges.append((tokens[i], tokens[j], float(prob[i, j])))
        tokens.append(tokens[i] + tokens[j])
        ids = merge_pair(ids, int(i), int(j), n)
    return Rebalanced(ids, tokens, merges)
