"""Plain-Python twins of :mod:`kexue.repetition.metrics` (one sequence at a time, sets and
loops): the definitions written as directly as possible, used by the tests and the benchmark."""

from __future__ import annotations

import math


def rep_n(seqs, n: int = 4) -> list[float]:
    out = []
    for s in seqs:
        grams = [tuple(s[i : i + n]) for i in range(len(s) - n + 1)]
        out.append(1 - len(set(grams)) / len(grams) if grams else math.nan)
    return out


def seq_rep_n(seqs, n: int = 4) -> float:
    values = [v for v in rep_n(seqs, n) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def distinct_n(seqs, n: int = 2) -> float:
    grams = [tuple(s[i : i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def rep_l(seqs, l: int = 16) -> float:  # noqa: E741
    hits = total = 0
    for s in seqs:
        for t in range(1, len(s)):
            total += 1
            hits += s[t] in s[max(0, t - l) : t]
    return hits / total if total else math.nan


def find_loops(seqs, max_period: int = 32, min_repeats: int = 2) -> list[tuple[bool, int, int]]:
    out = []
    for s in seqs:
        best = None  # (end, start, period)
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
