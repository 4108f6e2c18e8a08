"""Repetition metrics of generated text, vectorised over many sequences.

Sequences are lists of token ids (or of strings, mapped to ids here). Definitions:

* ``rep-n`` (SimCTG, Su et al. 2022): per sequence, ``1 − |unique n-grams| / |n-grams|``;
  reported as the mean over sequences. ``seq-rep-n`` (Welleck et al. 2019) is the same
  quantity for continuations; ``seq_rep_n`` returns it (default ``n = 4``).
* ``distinct-n`` (Li et al. 2016): ``|unique n-grams| / |n-grams|`` pooled over all sequences.
* ``diversity`` (SimCTG): ``Π_{n=2..4} (1 − rep-n)``.
* ``rep/l`` (Welleck et al.): the fraction of tokens (position ``t ≥ 1``) equal to one of the
  ``l`` tokens before them, pooled over sequences.
* ``wrep/l`` (Welleck et al.): for next-token predictions against targets, the fraction of
  positions whose prediction is wrong *and* repeats one of the previous ``l`` target tokens.
* ``uniq``: the number of distinct tokens over all sequences.
* loops (the article's repeated-subsequence event): a sequence loops at ``t`` with period ``k``
  when ``(r − 1)k + 1`` consecutive positions from ``t`` satisfy ``x_i = x_{i+k}``: a cycle
  ``w₁ … w_k`` walked ``r`` times and back at ``w₁`` (``r = min_repeats``, 2 by default:
  ``[w₁ … w_k]`` followed by ``[w₁ … w_k, w₁]``). The earliest event (smallest end) is reported.

Each vectorised function has a plain-Python twin in :mod:`kexue.repetition.metrics_reference`
giving the same numbers (tested; the benchmark times both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LoopEvents", "distinct_n", "find_loops", "rep_l", "rep_n", "summary", "to_array", "uniq", "wrep_l"]


def to_array(seqs: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """Pad sequences into ``(B, T)`` int64 ids with a per-position negative pad (never equal to
    anything), and their lengths. Strings are mapped to ids first."""
    seqs = [list(s) for s in seqs]
    if any(s and not isinstance(s[0], (int, np.integer)) for s in seqs):
        vocab: dict = {}
        seqs = [[vocab.setdefault(tok, len(vocab)) for tok in s] for s in seqs]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    width = int(lengths.max()) if len(seqs) else 0
    out = np.broadcast_to(-1 - np.arange(width, dtype=np.int64), (len(seqs), width)).copy()
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    if out.size and (out[out >= 0] > 2**40).any():
        raise ValueError("token ids must be below 2^40")
    return out, lengths


def _ngram_keys(X: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per valid n-gram: (sequence index, a collision-free key of the n-gram)."""
    B, T = X.shape
    if T < n:
        return np.zeros(0, np.int64), np.zeros((0, n), np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(X, n, axis=1)  # (B, T-n+1, n)
    valid = np.arange(T - n + 1)[None, :] <= (lengths[:, None] - n)
    seq = np.broadcast_to(np.arange(B)[:, None], valid.shape)[valid]
    return seq, windows[valid]


def _unique_counts(seq: np.ndarray, grams: np.ndarray, B: int) -> np.ndarray:
    if len(seq) == 0:
        return np.zeros(B, np.int64)
    rows = np.concatenate([seq[:, None], grams], axis=1)
    uniq_rows = np.unique(rows, axis=0)
    return np.bincount(uniq_rows[:, 0], minlength=B)


def rep_n(seqs, n: int = 4) -> np.ndarray:
    """Per sequence ``1 − unique/total`` n-grams (``nan`` for sequences shorter than ``n``)."""
    X, lengths = to_array(seqs)
    seq, grams = _ngram_keys(X, lengths, n)
    total = np.bincount(seq, minlength=len(lengths)).astype(np.float64)
    unique = _unique_counts(seq, grams, len(lengths))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1 - unique / np.where(total > 0, total, 1), np.nan)


def seq_rep_n(seqs, n: int = 4) -> float:
    """Welleck et al.'s seq-rep-n: the mean of :func:`rep_n` over sequences with n-grams."""
    values = rep_n(seqs, n)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def distinct_n(seqs, n: int = 2) -> float:
    X, lengths = to_array(seqs)
    _, grams = _ngram_keys(X, lengths, n)
    return float(len(np.unique(grams, axis=0)) / len(grams)) if len(grams) else float("nan")


def rep_l(seqs, l: int = 16) -> float:  # noqa: E741
    """Fraction of tokens (``t ≥ 1``) equal to one of the previous ``l`` tokens."""
    X, lengths = to_array(seqs)
    B, T = X.shape
    hit = np.zeros((B, T), dtype=bool)
    for d in range(1, min(l, T - 1) + 1):
        hit[:, d:] |= X[:, d:] == X[:, :-d]
    positions = np.arange(T)[None, :]
    valid = (positions >= 1) & (positions < lengths[:, None])
    return float(hit[valid].mean()) if valid.any() else float("nan")


def wrep_l(predictions, targets, l: int = 16) -> float:  # noqa: E741
    """Wrong predictions that repeat one of the previous ``l`` targets, as a fraction of
    positions; ``predictions[t]`` is the model's guess for ``targets[t]`` given ``targets[:t]``."""
    P, lengths = to_array(predictions)
    Y, lengths_y = to_array(targets)
    if P.shape != Y.shape or (lengths != lengths_y).any():
        raise ValueError("predictions and targets must have the same lengths")
    B, T = Y.shape
    hit = np.zeros((B, T), dtype=bool)
    for d in range(1, min(l, T - 1) + 1):
        hit[:, d:] |= P[:, d:] == Y[:, :-d]
    valid = np.arange(T)[None, :] < lengths[:, None]
    return float((hit & (P != Y))[valid].mean()) if valid.any() else float("nan")


def uniq(seqs) -> int:
    X, lengths = to_array(seqs)
    valid = np.arange(X.shape[1])[None, :] < lengths[:, None]
    return int(len(np.unique(X[valid])))


@dataclass
class LoopEvents:
    """Per sequence: whether it loops, where the first loop starts, its period (−1 if none)."""

    looped: np.ndarray
    start: np.ndarray
    period: np.ndarray

    @property
    def rate(self) -> float:
        return float(self.looped.mean()) if len(self.looped) else float("nan")


def find_loops(seqs, max_period: int = 32, min_repeats: int = 2) -> LoopEvents:
    """The first repeated-subsequence event of every sequence (module docstring)."""
    from kexue._shared import check_int

    check_int("max_period", max_period, 1)
    check_int("min_repeats", min_repeats, 2)
    X, lengths = to_array(seqs)
    B, T = X.shape
    never = 4 * T + 4  # beyond any real end (no overflow when k is added)
    best_end = np.full(B, never)
    best_start = np.full(B, -1)
    best_period = np.full(B, -1)
    for k in range(1, min(max_period, T - 1) + 1):
        need = (min_repeats - 1) * k + 1
        if need + k > T:
            break
        eq = X[:, k:] == X[:, :-k]  # eq[:, i]: x_i == x_{i+k}
        c = np.cumsum(eq, axis=1)
        reset = np.maximum.accumulate(np.where(~eq, c, 0), axis=1)
        run = c - reset  # run of True ending at i
        hits = run >= need
        found = hits.any(axis=1)
        first = np.where(found, hits.argmax(axis=1), never)
        end = first + k  # last token index of the event
        better = end < best_end
        best_end = np.where(better, end, best_end)
        best_start = np.where(better, first - need + 1, best_start)
        best_period = np.where(better, k, best_period)
    looped = best_period > 0
    return LoopEvents(looped, np.where(looped, best_start, -1), best_period)


def summary(seqs, *, max_period: int = 32, min_repeats: int = 2) -> dict[str, float]:
    """Every metric above on one set of generations (the CLI's table)."""
    loops = find_loops(seqs, max_period, min_repeats)
    reps = {n: seq_rep_n(seqs, n) for n in (2, 3, 4)}
    return {"sequences": len(seqs), "rep-2": reps[2], "rep-3": reps[3], "rep-4 (seq-rep-4)": reps[4],
            "diversity": float(np.prod([1 - r for r in reps.values()])), "distinct-1": distinct_n(seqs, 1),
            "distinct-2": distinct_n(seqs, 2), "rep/16": rep_l(seqs, 16), "uniq": uniq(seqs), "loop rate": loops.rate,
            "mean loop start": float(loops.start[loops.looped].mean()) if loops.looped.any() else float("nan")}
