"""Putting the pieces together: R per decoding rule, simulated decoding, rebalanced encoding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from kexue._shared import check_int, check_number
from kexue.repetition.measure import bounds, estimate_r, exact_r, spectral_radius, zeta
from kexue.repetition.transition import Decoding, MatrixLike, apply_decoding, as_dense

__all__ = ["DENSE_LIMIT", "RuleReport", "analyze", "dry_penalised", "merge_pair", "r_with_dry", "rebalance", "simulate"]

DENSE_LIMIT = 5000


@dataclass
class RuleReport:
    """One decoding rule's line of :func:`analyze`.

    Args:
        rule: the rule's spelling.
        r: ``R`` of the decoded matrix.
        r_stderr: its standard error (0 when exact).
        method: how ``R`` was computed.
        lambda1: ``λ₁ = ρ(P∘P)``.
        zeta: the fraction of non-zero entries.
        lower: proven lower bound, per-token form (dense only; ``nan`` otherwise).
        article_estimate: the article's estimate.
        upper: proven upper bound ``n λ₁ / (1 − λ₁)``.
        note: why a bound is missing (``nan``), if one is.
    """

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


def analyze(
    P: MatrixLike, rules: Sequence[Decoding], *, terms: int = 30, probes: int = 32, seed: int = 0
) -> list[RuleReport]:
    """R (exact up to ``DENSE_LIMIT`` tokens, else :func:`~kexue.repetition.measure.estimate_r` to 0.5 %
    standard error), λ₁, ζ and bounds per rule. Where a bound is ``nan``, ``note`` says why: a
    deterministic decoder (greedy) has ``λ₁ = 1`` and ``R = ∞``, and its ζ-based estimates diverge.

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.
        rules: the decoding rules.
        terms: powers summed for the bounds.
        probes: probes to start the estimate with (large ``P``).
        seed: seed of the estimate's probes.

    Returns:
        One :class:`RuleReport` per rule.
    """
    n = int(np.shape(P)[0])
    return [_analyze_rule(P, rule, n, terms=terms, probes=probes, seed=seed) for rule in rules]


def _analyze_rule(P: MatrixLike, rule: Decoding, n: int, *, terms: int, probes: int, seed: int) -> RuleReport:
    """One rule's :class:`RuleReport` (see :func:`analyze`)."""
    D = apply_decoding(P, rule)
    lam = spectral_radius(D)
    if n <= DENSE_LIMIT:
        r, se, method = exact_r(D), 0.0, "exact"
        b = bounds(D, terms=terms) if n <= 2000 and lam < 1 - 1e-12 else None  # R = ∞: nothing to bound
    else:
        est = estimate_r(D if sp.issparse(D) else sp.csr_array(D), probes=probes, seed=seed)
        r, se, b = est.value, est.stderr, None
        method = (
            f"{est.method} ({est.probes} probes, {est.blocks:,} blocks)" if est.stochastic_tokens else "exact (blocks)"
        )
    upper = n * lam / (1 - lam) if lam < 1 - 1e-12 else math.inf
    z = zeta(D)
    missing, note = (math.nan, "") if b else _missing_bounds(lam, z, n)
    return RuleReport(
        rule=str(rule),
        r=r,
        r_stderr=se,
        method=method,
        lambda1=lam,
        zeta=z,
        lower=b.lower_diagonal if b else missing,
        article_estimate=b.article_estimate if b else missing,
        upper=upper,
        note=note,
    )


DRY_MAX_TOKENS = 2000  # dry_penalised is O(n³) in time and holds dense n × n copies


def dry_penalised(P: MatrixLike, rule: Decoding | str, *, delta: float) -> np.ndarray:
    """``G[i, j]``: the probability of ``j`` after ``i`` when ``j``'s logit is lowered by ``delta``
    and then ``rule`` is applied (row ``i`` of ``P`` with entry ``j`` times ``e^(−delta)``,
    renormalised, decoded): DRY's effect on the one token that would extend a repeat, in
    llama.cpp's order (DRY before top-k, top-p, temperature).

    Args:
        P: row-stochastic ``(n, n)`` matrix (``n`` up to ``DRY_MAX_TOKENS``).
        rule: the decoding rule.
        delta: how much the logit is lowered.

    Returns:
        The dense ``(n, n)`` matrix ``G``.
    """
    n = int(np.shape(P)[0])
    if n > DRY_MAX_TOKENS:
        raise ValueError(
            f"P has {n} tokens: dry_penalised decodes one dense copy of P per token (O(n³)), so it accepts at "
            f"most {DRY_MAX_TOKENS}; restrict P to the tokens that matter (e.g. a character-level model)"
        )
    dense = as_dense(P)
    G = np.zeros_like(dense)
    factor = math.exp(-delta)
    for j in np.flatnonzero(dense.any(axis=0)):
        scaled = dense.copy()
        scaled[:, j] *= factor
        scaled /= scaled.sum(axis=1, keepdims=True)
        G[:, j] = apply_decoding(scaled, rule, sparse=False)[:, j]
    return G


def r_with_dry(
    P: MatrixLike,
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

    Args:
        P: row-stochastic ``(n, n)`` matrix.
        rule: the decoding rule.
        multiplier: DRY's penalty scale.
        base: DRY's growth per extra repeated token (``≥ 1``).
        allowed_length: DRY's longest free repeat.
        tol: stop once the products are below this (relative to the sum).
        max_terms: the most cycle lengths summed.

    Returns:
        ``R_DRY`` (``inf`` if the products do not vanish within ``max_terms``).
    """
    check_number("multiplier", multiplier, above=0)
    check_number("base", base)
    if base < 1:
        raise ValueError(f"base={base!r} must be >= 1")
    check_int("allowed_length", allowed_length, 1)
    D: Any = apply_decoding(P, rule, sparse=False)  # sparse for a sparse P under greedy, top-k, top-p
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
                cache[delta] = D * dry_penalised(P, rule, delta=delta)
            M = cache[delta]
        product = product @ M
        total += float(np.trace(product))
        if j >= allowed_length and product.sum() <= tol * max(total, 1e-300):
            return total
    return math.inf


def simulate(
    P: MatrixLike, *, sequences: int, length: int, seed: int = 0, start: np.ndarray | None = None
) -> np.ndarray:
    """``(sequences, length)`` token ids sampled from the Markov chain ``P``.

    Args:
        P: row-stochastic ``(n, n)`` matrix.
        sequences: how many sequences.
        length: tokens per sequence.
        seed: seed of the sampling.
        start: the first token of each sequence (default: drawn from the stationary-ish unigram of the
            rows' targets).

    Returns:
        ``(sequences, length)`` int64 ids.
    """
    M: Any = P  # scipy.sparse ships no types
    dense = M.toarray() if sp.issparse(M) else np.asarray(M)
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
    """Replace non-overlapping occurrences of ``a b`` (left to right) by ``new``.

    Args:
        ids: 1-D token ids.
        a: the pair's first token.
        b: the pair's second token.
        new: the merged token's id.

    Returns:
        The merged ids (``ids`` itself when the pair does not occur).
    """
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
    """The result of :func:`rebalance`.

    Args:
        ids: the corpus's ids after the merges.
        tokens: the vocabulary, merged tokens appended.
        merges: ``(first, second, P_ij)`` of each merge, in order.
    """

    ids: np.ndarray
    tokens: list[str]
    merges: list[tuple[str, str, float]]


def rebalance(
    ids: np.ndarray, tokens: list[str], *, gamma: float = 0.5, max_merges: int = 200, min_count: int = 20
) -> Rebalanced:
    """Rebalanced encoding (Fu et al. 2021): repeatedly merge the pair ``(i, j)`` with the
    highest transition probability ``P_ij > gamma`` (seen at least ``min_count`` times) into a
    new token, re-estimating the counts after each merge.

    Args:
        ids: the corpus's token ids.
        tokens: the vocabulary.
        gamma: the smallest transition probability that merges.
        max_merges: the most merges.
        min_count: the fewest occurrences of a pair that merges.

    Returns:
        :class:`Rebalanced`.
    """
    check_number("gamma", gamma, above=0)
    check_int("max_merges", max_merges, 0)
    ids, tokens = ids.copy(), list(tokens)
    merges: list[tuple[str, str, float]] = []
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
    return Rebalanced(ids=ids, tokens=tokens, merges=merges)
