"""Plain-Python definitions of the ``generate`` hooks' rules, one sequence at a time, written as
directly as the rules read: the oracles of :mod:`kexue.repetition.dry` and
:mod:`kexue.repetition.hf` in the tests.

* :func:`dry_penalties`: llama.cpp's DRY penalty for every token (see :mod:`~kexue.repetition.dry`).
* :func:`vllm_repeats`: vLLM's repetition detection (the tail is one pattern repeated
  ``min_count`` times, for a pattern size in ``[min_pattern_size, max_pattern_size]``).
* :func:`article_repeats`: the article's event at the tail (a cycle walked ``r`` times and back
  at its first token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def dry_penalties(
    tokens: Sequence[int],
    *,
    multiplier: float,
    base: float = 1.75,
    allowed_length: int = 2,
    penalty_last_n: int = -1,
    breakers: Sequence[tuple[int, tuple[int, ...]]] = (),
    start: int = 0,
) -> dict[int, float]:
    """Token → amount subtracted from its logit, for the sequence ``tokens`` (window after ``start``)."""
    ctx = list(tokens[start:])
    if penalty_last_n > 0:
        ctx = ctx[-penalty_last_n:]
    n_ctx = len(ctx)
    if multiplier == 0 or penalty_last_n == 0 or n_ctx <= allowed_length:
        return {}
    limit = n_ctx  # tokens after the most recent breaker
    for back in range(n_ctx):
        pos = n_ctx - 1 - back
        tails = [
            len(t)
            for h, t in breakers
            if h == ctx[pos] and len(t) <= back and tuple(ctx[pos + 1 : pos + 1 + len(t)]) == tuple(t)
        ]
        if tails:
            limit = back - max(tails)
            break
    longest: dict[int, int] = {}
    for i in range(n_ctx - 1):
        n = 0
        while n <= i and ctx[i - n] == ctx[n_ctx - 1 - n]:
            n += 1
        n = min(n, limit)
        if n >= allowed_length:
            longest[ctx[i + 1]] = max(longest.get(ctx[i + 1], 0), n)
    singles = {h for h, t in breakers if not t}
    cap = int(88.7228391 / math.log(base)) if base > 1.000001 else None
    return {
        tok: multiplier * base ** (n - allowed_length if cap is None else min(n - allowed_length, cap))
        for tok, n in longest.items()
        if tok not in singles
    }


def vllm_repeats(tokens: Sequence[int], *, max_pattern_size: int, min_pattern_size: int, min_count: int) -> int:
    """The smallest pattern size ``k`` whose ``min_count`` copies end ``tokens`` (0 if none; vLLM
    turns the check off for ``max_pattern_size <= 0`` or ``min_count < 2``)."""
    if max_pattern_size <= 0 or min_count < 2:
        return 0
    for k in range(max(min_pattern_size, 1), max_pattern_size + 1):
        if k * min_count > len(tokens):
            return 0
        tail = list(tokens[len(tokens) - k * min_count :])
        if all(tail[j] == tail[j % k] for j in range(len(tail))):
            return k
    return 0


def article_repeats(tokens: Sequence[int], *, max_period: int, min_period: int, min_repeats: int) -> int:
    """The smallest period ``k`` such that the last ``r k + 1`` tokens are a cycle of length ``k``
    walked ``r = min_repeats`` times and back at its start (0 if none)."""
    for k in range(min_period, max_period + 1):
        need = min_repeats * k + 1
        if need > len(tokens):
            return 0
        tail = list(tokens[len(tokens) - need :])
        if all(tail[j] == tail[j % k] for j in range(need)):
            return k
    return 0
