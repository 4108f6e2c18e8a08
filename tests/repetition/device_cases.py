"""The generate hooks' entries in the device and precision contract (see tests/device_contract.py).

The hot call is one decoding step after the first call (which built the state from the prompt), as
``generate`` makes it. References: the plain-Python definitions of :mod:`kexue.repetition.hooks_reference`
in float64; boolean and integer outputs compare exactly.
"""

from __future__ import annotations

import random

import torch

from device_contract import LOW_DTYPES, Entry, Setting, build
from kexue.repetition.dry import DRYLogitsProcessor
from kexue.repetition.hf import LoopBreakingProcessor, LoopStoppingCriteria, tail_loop_period
from kexue.repetition.hooks_reference import article_repeats, dry_penalties

B, T, V, PROMPT = 3, 28, 9, 4
BREAKERS = [(8, ()), (7, (0,))]
_EXACT = dict.fromkeys(LOW_DTYPES, 0.0)
_EXACT_WHY = "integer/boolean output: exact"


def _ids() -> torch.Tensor:
    rng = random.Random(0)
    rows = []
    for r in range(B):
        s = [rng.randrange(V) for _ in range(T // 2)]
        rows.append(s + (s[-(r + 2) :] * T)[: T - len(s)])  # loops of period 2, 3, 4
    return torch.tensor(rows)


def _scores(dtype: torch.dtype, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, V, generator=g, dtype=torch.float64) * 4).to(device, dtype)


# --- DRY ---------------------------------------------------------------------------------------------


def _dry(setting: Setting):
    scores = build(setting, _scores)
    ids = _ids().to(setting.device)
    dry = DRYLogitsProcessor(
        0.8, base=1.75, allowed_length=2, breaker_ids=[[h, *t] for h, t in BREAKERS], prompt_length=PROMPT
    )
    dry(ids[:, :-1], scores)  # the prompt and the tokens so far: builds the state
    return lambda: dry(ids, scores)


def _dry_penalties() -> torch.Tensor:
    out = torch.zeros(B, V, dtype=torch.float64)
    for b, row in enumerate(_ids().tolist()):
        for token, amount in dry_penalties(row, multiplier=0.8, breakers=BREAKERS, start=PROMPT).items():
            out[b, token] = amount
    return out


def _dry_reference(dtype: torch.dtype) -> torch.Tensor:
    return _scores(dtype, "cpu").double() - _dry_penalties()


def _dry_plain(dtype: torch.dtype) -> torch.Tensor:
    return _scores(dtype, "cpu") - _dry_penalties().to(dtype)


# --- loop stopping, loop breaking, the tail test --------------------------------------------------------


def _stop(setting: Setting):
    scores = build(setting, _scores)
    ids = _ids().to(setting.device)
    stop = LoopStoppingCriteria(PROMPT, max_period=3, min_repeats=3)
    stop(ids[:, :-1], scores)
    return lambda: stop(ids, scores)


def _stop_reference(dtype: torch.dtype) -> torch.Tensor:
    rows = _ids().tolist()
    stopped = [
        any(article_repeats(r[PROMPT:u], max_period=3, min_period=1, min_repeats=3) for u in range(PROMPT + 1, T + 1))
        for r in rows
    ]
    return torch.tensor(stopped, dtype=torch.float64)  # 0/1: the matrix compares values in float64


def _break(setting: Setting):
    scores = build(setting, _scores)
    ids = _ids().to(setting.device)
    processor = LoopBreakingProcessor(PROMPT, penalty=1.5, max_period=5, min_repeats=2)
    return lambda: processor(ids, scores.clone())


def _break_reference(dtype: torch.dtype, plain: bool = False) -> torch.Tensor:
    """The definition: per period k (increasing), the token closing an (r − 1)k-token run is divided by
    the penalty (multiplied if negative)."""
    scores = _scores(dtype, "cpu") if plain else _scores(dtype, "cpu").double()
    for b, row in enumerate(_ids().tolist()):
        gen = row[PROMPT:]
        for k in range(1, 6):
            tail = gen[len(gen) - 2 * k :] if 2 * k <= len(gen) else None
            if tail is not None and tail[k:] == tail[:k]:
                token, value = gen[len(gen) - k], scores[b, gen[len(gen) - k]]
                scores[b, token] = value / 1.5 if value > 0 else value * 1.5
    return scores


def _period(setting: Setting):
    ids = _ids().to(setting.device)
    return lambda: tail_loop_period(ids, PROMPT, max_period=5, min_repeats=2)


def _period_reference(dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(
        [article_repeats(r[PROMPT:], max_period=5, min_period=1, min_repeats=2) for r in _ids().tolist()]
    )


ENTRIES = [
    Entry(
        name="kexue.repetition.DRYLogitsProcessor",
        prepare=_dry,
        reference=_dry_reference,
        plain=_dry_plain,
        accepts="int64 ids on any device; scores float32, float16, bfloat16, float64",
        computes="repeat lengths in int64 on the ids' device; penalties in float32, subtracted in the scores' dtype",
        returns="the scores' dtype",
    ),
    Entry(
        name="kexue.repetition.LoopStoppingCriteria",
        prepare=_stop,
        reference=_stop_reference,
        tolerance=_EXACT,
        why=_EXACT_WHY,
        out_dtype=lambda setting: torch.bool,
        accepts="int64 ids on any device (scores unused)",
        computes="run lengths in int64 on the ids' device",
        returns="bool, one flag per row",
    ),
    Entry(
        name="kexue.repetition.LoopBreakingProcessor",
        prepare=_break,
        reference=_break_reference,
        plain=lambda dtype: _break_reference(dtype, plain=True),
        accepts="int64 ids on any device; scores float32, float16, bfloat16, float64",
        computes="the scores' dtype (in place)",
        returns="the scores' dtype",
    ),
    Entry(
        name="kexue.repetition.tail_loop_period",
        prepare=_period,
        reference=_period_reference,
        tolerance=_EXACT,
        why=_EXACT_WHY,
        out_dtype=lambda setting: torch.int64,
        accepts="int64 ids on any device",
        computes="int64 comparisons on the ids' device",
        returns="int64, one period per row (0: none)",
    ),
]
