"""Putting the pieces together: R per decoding rule, simulated decoding, rebalanced encoding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from kexue.repetition.measure import bounds, estimate_r, exact_r, spectral_radius, zeta
from kexue.repetition.transition import Decoding, apply_decoding

__all__ = ["DENSE_LIMIT", "RuleReport", "analyze", "merge_pair", "rebalance", "simulate"]

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


def analyze(P, rules: Sequence[Decoding], *, terms: int = 30, probes: int = 64, seed: int = 0) -> list[RuleReport]:
    """R (exact up to ``DENSE_LIMIT`` tokens, else the stochastic estimate), λ₁, ζ and bounds per rule."""
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
            r, se, method, b = est.value, est.stderr, f"Hutchinson ({probes} probes)", None
        upper = n * lam / (1 - lam) if lam < 1 - 1e-12 else math.inf
        rows.append(RuleReport(str(rule), r, se, method, lam, zeta(D), b.lower_diagonal if b else math.nan,
                               b.article_estimate if b else math.nan, upper))
    return rows


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


def rebalance(ids: np.ndarray, tokens: list[str], *, gamma: float = 0.5, max_merges: int = 200, min_count: int = 20) -> Rebalanced:
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
