"""Metric definitions on hand-made strings, and the vectorised code against the plain-Python twin."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from kexue.repetition import measure, metrics, transition
from kexue.repetition import metrics_reference as ref


def test_hand_made_strings() -> None:
    s = list("abcabcabc")
    # 4-grams: abca bcab cabc abca bcab cabc -> 3 unique of 6
    assert metrics.rep_n([s], n=4)[0] == pytest.approx(0.5)
    assert metrics.distinct_n([list("abcd")], n=2) == 1.0
    assert metrics.rep_l([list("abca")], l=2) == pytest.approx(0.0)  # 'a' at t=3 is 3 back: outside l = 2
    assert metrics.rep_l([list("abca")], l=3) == pytest.approx(1 / 3)
    assert metrics.uniq([list("aab"), list("bc")]) == 3
    # the event: [w1..wk] followed by [w1..wk, w1], i.e. 2k + 1 tokens of period k
    loops = metrics.find_loops([list("xyzababa"), list("abcdef"), list("aaa"), list("xyzabab")], max_period=4)
    assert loops.looped.tolist() == [True, False, True, False]  # "abab" alone has not closed the loop
    assert loops.start.tolist() == [3, -1, 0, -1] and loops.period.tolist() == [2, -1, 1, -1]
    three = metrics.find_loops([list("ababa"), list("abababa")], max_period=4, min_repeats=3)
    assert three.looped.tolist() == [False, True]
    assert metrics.wrep_l([[1, 2, 1, 9]], [[1, 2, 3, 4]], l=4) == pytest.approx(0.25)  # position 2: wrong and repeats 1
    assert math.isnan(metrics.rep_n([[1, 2]], n=4)[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_equals_plain_python(seed: int) -> None:
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(60):
        n = int(rng.integers(0, 40))
        base = rng.integers(0, 6, size=n).tolist()
        if rng.random() < 0.5 and n > 6:  # plant loops
            k = int(rng.integers(1, 4))
            base = base[: n // 2] + base[n // 2 : n // 2 + k] * 4
        seqs.append(base)
    for n in (1, 2, 4):
        ours, theirs = metrics.rep_n(seqs, n=n), np.array(ref.rep_n(seqs, n=n))
        assert np.allclose(ours, theirs, equal_nan=True)
        assert metrics.distinct_n(seqs, n=n) == pytest.approx(ref.distinct_n(seqs, n=n))
    assert metrics.seq_rep_n(seqs, n=4) == pytest.approx(ref.seq_rep_n(seqs, n=4))
    assert metrics.rep_l(seqs, l=5) == pytest.approx(ref.rep_l(seqs, l=5))
    for r in (2, 3):
        ev = metrics.find_loops(seqs, max_period=8, min_repeats=r)
        assert list(zip(ev.looped.tolist(), ev.start.tolist(), ev.period.tolist(), strict=True)) == ref.find_loops(
            seqs, max_period=8, min_repeats=r
        )


def test_summary_has_every_metric() -> None:
    out = metrics.summary([list("the cat sat on the mat"), list("lalalalalala")])
    assert out["loop rate"] == 0.5 and 0 < out["rep-2"] < 1 and out["uniq"] > 5


def test_options_are_keyword_only() -> None:
    from kexue.repetition import dry, hf  # optional extra: nlp (transformers)

    data_args = {metrics.wrep_l: 2}  # predictions and targets
    entry_points = [
        metrics.rep_n,
        metrics.seq_rep_n,
        metrics.distinct_n,
        metrics.rep_l,
        metrics.wrep_l,
        metrics.find_loops,
        measure.bounds,
        measure.r_series,
        measure.spectral_radius,
        transition.tokenize,
        dry.DRYLogitsProcessor.__init__,
        hf.LoopStoppingCriteria.__init__,
        hf.LoopStoppingCriteria.from_vllm,
        hf.LoopBreakingProcessor.__init__,
        hf.PromptExcludedRepetitionPenalty.__init__,
    ]
    for fn in entry_points:
        params = list(inspect.signature(fn).parameters.values())
        params = [p for p in params if p.name not in ("self", "cls")]
        positional = data_args.get(fn, 1)
        assert all(p.kind is p.KEYWORD_ONLY for p in params[positional:]), (fn.__qualname__, params)
    with pytest.raises(TypeError):
        metrics.find_loops([[1, 2, 1, 2]], 4)  # max_period is keyword-only
