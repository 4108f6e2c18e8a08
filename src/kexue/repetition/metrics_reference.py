"""Plain-Python twins of :mod:`kexue.repetition.metrics` (one sequence at a time, sets and
loops): the definitions written as directly as possible, used by the tests and the benchmark."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

Seqs = Sequence[Sequence[Hashable]]


def rep_n(seqs: Seqs, *, n: int = 4) -> list[float]:
    """Per sequence ``1 − unique/total`` n-grams."""
    out: list[float] = []
    for s in seqs:
        grams = [tuple(s[i : i + n]) for i in range(len(s) - n + 1)]
        out.append(1 - len(set(grams)) / len(grams) if grams else math.nan)
    return out


def seq_rep_n(seqs: Seqs, *, n: int = 4) -> float:
    """The mean of :func:`rep_n` over sequences with n-grams."""
    values = [v for v in rep_n(seqs, n=n) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def distinct_n(seqs: Seqs, *, n: int = 2) -> float:
    """Unique over all n-grams, pooled."""
    grams = [tuple(s[i : i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def rep_l(seqs: Seqs, *, l: int = 16) -> float:  # noqa: E741 (Welleck et al.'s name for the window)
    """Tokens equal to one of the previous ``l``, as a fraction."""
    hits = total = 0
    for s in seqs:
        for t in range(1, len(s)):
            total += 1
            hits += s[t] in s[max(0, t - l) : t]
    return hits / total if total else math.nan


def find_loops(seqs: Seqs, *, max_period: int = 32, min_repeats: int = 2) -> list[tuple[bool, int, int]]:
    """Per sequence, ``(looped, start, period)`` of the first loop event."""
    out: list[tuple[bool, int, int]] = []
    for s in seqs:
        best: tuple[int, int, int] | None = None  # (end, start, period)
        for k in range(1, max_period + 1):
            need = (min_repeats - 1) * k + 1
            run = 0
            for i in range(len(s) - k):
                run = run + 1 if s[i] == s[i + k] else 0
                if run >= need:
                    end = i + k
                    if best is None or end < best[0]:
                        best = (end, i - need + 1, k)
                    break
        out.append((True, best[1], best[2]) if best else (False, -1, -1))
    return out
