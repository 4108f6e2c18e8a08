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

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from kexue._shared import check_int

__all__ = ["LoopEvents", "distinct_n", "find_loops", "rep_l", "rep_n", "summary", "to_array", "uniq", "wrep_l"]

# token sequences as the metrics take them: lists of ids or strings, a 2-D integer array, or sequences
# already converted by ``_padded``
Sequences: TypeAlias = "Iterable[Sequence[Hashable]] | np.ndarray | _Padded"


def _token_lists(seqs: Iterable[Sequence[Hashable]]) -> list[list[Hashable]]:
    """``seqs`` as a non-empty list of token lists; a clear error naming ``seqs`` otherwise."""
    what = "seqs must be a list of token sequences (lists of ids or of strings)"
    try:
        items = list(seqs)
    except TypeError:
        raise TypeError(f"{what}; got {type(seqs).__name__}") from None
    if not items:
        raise ValueError("seqs is empty: give at least one token sequence")
    out = []
    for i, s in enumerate(items):
        try:
            out.append(list(s))
        except TypeError:
            raise TypeError(f"{what}; seqs[{i}] is a {type(s).__name__}, not a sequence") from None
    return out


def to_array(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """Pad sequences into ``(B, T)`` int64 ids with a per-position negative pad (never equal to
    anything), and their lengths. Strings are mapped to ids first; a 2-D integer array is taken
    as is (every row full length).

    Args:
        seqs: token sequences (lists of ids or of strings), or a 2-D integer array.

    Returns:
        ``(X, lengths)``: the padded ``(B, T)`` ids and each sequence's length.
    """
    if isinstance(seqs, _Padded):
        return seqs.X, seqs.lengths
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2 and np.issubdtype(seqs.dtype, np.integer):
        if seqs.size and seqs.min() < 0:
            raise ValueError("token ids must be >= 0")
        return seqs.astype(np.int64, copy=False), np.full(seqs.shape[0], seqs.shape[1], dtype=np.int64)
    lists = _token_lists(seqs)
    if any(s and not isinstance(s[0], (int, np.integer)) for s in lists):
        vocab: dict[Hashable, int] = {}
        lists = [[vocab.setdefault(tok, len(vocab)) for tok in s] for s in lists]
    return _pad(lists)


def _pad(seqs: list[list[Hashable]]) -> tuple[np.ndarray, np.ndarray]:
    """Integer id lists as ``(B, T)`` int64 ids (negative per-position pad) and their lengths."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    width = int(lengths.max()) if len(seqs) else 0
    if len(seqs) and (lengths == width).all():  # equal lengths: one conversion, no padding
        out = np.asarray(seqs, dtype=np.int64).reshape(len(seqs), width)
        if out.size and out.min() < 0:
            raise ValueError("token ids must be >= 0")
        return out, lengths
    out = np.broadcast_to(-1 - np.arange(width, dtype=np.int64), (len(seqs), width)).copy()
    for i, s in enumerate(seqs):
        out[i, : len(s)] = np.asarray(s)
    if out.size and (out[out >= 0] > 2**40).any():
        raise ValueError("token ids must be below 2^40")
    return out, lengths


def _ngram_keys(X: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, T − n + 1)`` int64 keys, equal exactly for equal n-grams, and the mask of valid ones."""
    B, T = X.shape
    if T < n:
        return np.zeros((B, 0), np.int64), np.zeros((B, 0), bool)
    valid = np.arange(T - n + 1)[None, :] <= (lengths[:, None] - n)
    base = int(X.max()) + 1 if X.size else 1
    if base**n < 2**62:  # a positional number in base V: collision-free
        key = np.zeros((B, T - n + 1), dtype=np.int64)
        for j in range(n):
            key = key * base + np.maximum(X[:, j : T - n + 1 + j], 0)
        return key, valid
    windows = np.lib.stride_tricks.sliding_window_view(X, n, axis=1)[valid]
    _, rank = np.unique(windows, axis=0, return_inverse=True)  # large vocabularies: rank the rows
    key = np.zeros((B, T - n + 1), dtype=np.int64)
    key[valid] = rank.ravel()
    return key, valid


def rep_n(seqs: Sequences, *, n: int = 4) -> np.ndarray:
    """Per sequence ``1 − unique/total`` n-grams (``nan`` for sequences shorter than ``n``).

    Args:
        seqs: token sequences.
        n: the n-gram length.

    Returns:
        One value per sequence.
    """
    X, lengths = to_array(seqs)
    key, valid = _ngram_keys(X, lengths, n)
    total = valid.sum(axis=1).astype(np.float64)
    if key.shape[1] == 0:
        return np.full(len(lengths), np.nan)
    # invalid slots get distinct negative keys; after sorting each row, a new value starts where it changes
    key = np.where(valid, key, -1 - np.arange(key.shape[1])[None, :])
    ordered = np.sort(key, axis=1)
    distinct = 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)
    unique = distinct - (~valid).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1 - unique / np.where(total > 0, total, 1), np.nan)


def seq_rep_n(seqs: Sequences, *, n: int = 4) -> float:
    """Welleck et al.'s seq-rep-n: the mean of :func:`rep_n` over sequences with n-grams.

    Args:
        seqs: token sequences (lists of ids or of strings).
        n: the n-gram length.

    Returns:
        seq-rep-n (``nan`` when no sequence has an n-gram).

    Example:
        >>> seq_rep_n([[1, 2, 1, 2, 1, 2], [1, 2, 3, 4, 5, 6]], n=2)  # 1 - 2/5 and 0
        0.3
    """
    values = rep_n(seqs, n=n)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def distinct_n(seqs: Sequences, *, n: int = 2) -> float:
    """``|unique n-grams| / |n-grams|`` pooled over all sequences.

    Args:
        seqs: token sequences.
        n: the n-gram length.

    Returns:
        distinct-n (``nan`` without n-grams).
    """
    X, lengths = to_array(seqs)
    key, valid = _ngram_keys(X, lengths, n)
    grams = key[valid]
    return float(len(np.unique(grams)) / len(grams)) if len(grams) else float("nan")


def rep_l(seqs: Sequences, *, l: int = 16) -> float:  # noqa: E741 (Welleck et al.'s name for the window)
    """Fraction of tokens (``t ≥ 1``) equal to one of the previous ``l`` tokens.

    Args:
        seqs: token sequences.
        l: the window.

    Returns:
        rep/l.
    """
    X, lengths = to_array(seqs)
    B, T = X.shape
    hit = np.zeros((B, T), dtype=bool)
    for d in range(1, min(l, T - 1) + 1):
        hit[:, d:] |= X[:, d:] == X[:, :-d]
    positions = np.arange(T)[None, :]
    valid = (positions >= 1) & (positions < lengths[:, None])
    return float(hit[valid].mean()) if valid.any() else float("nan")


def wrep_l(predictions: Sequences, targets: Sequences, *, l: int = 16) -> float:  # noqa: E741 (Welleck et al.'s name)
    """Wrong predictions that repeat one of the previous ``l`` targets, as a fraction of
    positions; ``predictions[t]`` is the model's guess for ``targets[t]`` given ``targets[:t]``.

    Args:
        predictions: predicted token sequences.
        targets: the target sequences, of the same lengths.
        l: the window.

    Returns:
        wrep/l.
    """
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


def uniq(seqs: Sequences) -> int:
    """The number of distinct tokens over all sequences.

    Args:
        seqs: token sequences.

    Returns:
        uniq.
    """
    X, lengths = to_array(seqs)
    valid = np.arange(X.shape[1])[None, :] < lengths[:, None]
    return len(np.unique(X[valid]))


@dataclass
class LoopEvents:
    """Per sequence: whether it loops, where the first loop starts, its period (−1 if none).

    Args:
        looped: whether each sequence loops.
        start: where its first loop starts (−1 if none).
        period: the loop's period (−1 if none).
    """

    looped: np.ndarray
    start: np.ndarray
    period: np.ndarray

    @property
    def rate(self) -> float:
        """The fraction of sequences that loop (``nan`` for none)."""
        return float(self.looped.mean()) if len(self.looped) else float("nan")


def find_loops(seqs: Sequences, *, max_period: int = 32, min_repeats: int = 2) -> LoopEvents:
    """The first repeated-subsequence event of every sequence (module docstring).

    Args:
        seqs: token sequences.
        max_period: the longest period looked for.
        min_repeats: how many times the cycle is walked (2: the article's event).

    Returns:
        :class:`LoopEvents`.

    Example:
        >>> events = find_loops([[5, 1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 4]])
        >>> events.looped.tolist(), events.start.tolist(), events.period.tolist()
        ([True, False], [1, -1], [3, -1])
    """
    check_int("max_period", max_period, 1)
    check_int("min_repeats", min_repeats, 2)
    X, _ = to_array(seqs)
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
        # a run of `need` equalities ends at i when the window sum over the last `need` is full
        c = np.zeros((B, eq.shape[1] + 1), dtype=np.int16 if T < 32000 else np.int32)
        np.cumsum(eq, axis=1, out=c[:, 1:])
        hits = (c[:, need:] - c[:, :-need]) == need  # hits[:, j]: run over eq[j .. j + need - 1]
        found = hits.any(axis=1)
        # report the position of the run's last equality, as before
        first_start = np.where(found, hits.argmax(axis=1), never)
        end = first_start + need - 1 + k  # last token index of the event
        better = end < best_end
        best_end = np.where(better, end, best_end)
        best_start = np.where(better, first_start, best_start)
        best_period = np.where(better, k, best_period)
    looped = best_period > 0
    return LoopEvents(looped=looped, start=np.where(looped, best_start, -1), period=best_period)


class _Padded:
    """Sequences converted once, reused by several metrics."""

    def __init__(self, X: np.ndarray, lengths: np.ndarray) -> None:
        self.X, self.lengths = X, lengths

    def __len__(self) -> int:
        return len(self.lengths)


def _padded(seqs: Sequences) -> _Padded:
    return seqs if isinstance(seqs, _Padded) else _Padded(*to_array(seqs))


def summary(seqs: Sequences, *, max_period: int = 32, min_repeats: int = 2) -> dict[str, float]:
    """Every metric above on one set of generations (the CLI's table).

    Args:
        seqs: token sequences (lists of ids or of strings).
        max_period: the longest loop period looked for.
        min_repeats: how many times a cycle is walked to count as a loop.

    Returns:
        Metric name → value (``"sequences"`` and ``"uniq"`` are counts).

    Example:
        >>> result = summary([list("abcabcabc"), list("the quick")])
        >>> result["sequences"], result["loop rate"]
        (2, 0.5)
    """
    padded = _padded(seqs)
    loops = find_loops(padded, max_period=max_period, min_repeats=min_repeats)
    reps = {n: seq_rep_n(padded, n=n) for n in (2, 3, 4)}
    return {
        "sequences": len(padded),
        "rep-2": reps[2],
        "rep-3": reps[3],
        "rep-4 (seq-rep-4)": reps[4],
        "diversity": float(np.prod([1 - r for r in reps.values()])),
        "distinct-1": distinct_n(padded, n=1),
        "distinct-2": distinct_n(padded, n=2),
        "rep/16": rep_l(padded, l=16),
        "uniq": uniq(padded),
        "loop rate": loops.rate,
        "mean loop start": float(loops.start[loops.looped].mean()) if loops.looped.any() else float("nan"),
    }
