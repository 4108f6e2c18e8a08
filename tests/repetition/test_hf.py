"""The generate hooks: loop stopping, loop breaking, prompt-excluded penalty, with model.generate."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList, StoppingCriteriaList

from kexue.repetition.hf import (
    LoopBreakingProcessor,
    LoopStoppingCriteria,
    PromptExcludedRepetitionPenalty,
    tail_loop_period,
)


def test_tail_loop_period_ignores_the_prompt() -> None:
    ids = torch.tensor([[1, 2, 1, 2, 1, 2, 1], [5, 6, 7, 8, 9, 10, 11], [3, 3, 3, 4, 4, 4, 4]])
    assert tail_loop_period(ids, 0, max_period=4, min_repeats=3).tolist() == [2, 0, 1]
    assert tail_loop_period(ids, 3, max_period=4, min_repeats=3).tolist() == [0, 0, 1]  # rows 0's loop is mostly prompt


def _looping_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=12,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    )
    return model.eval()


def test_generate_stops_at_the_first_loop() -> None:
    model = _looping_model()
    prompt = torch.tensor([[1, 2, 3]])
    plain = model.generate(prompt, max_new_tokens=60, do_sample=False, pad_token_id=0)
    from kexue.repetition.metrics import find_loops

    assert find_loops([plain[0, 3:].tolist()], max_period=8, min_repeats=3).looped[0]
    stopped = model.generate(
        prompt,
        max_new_tokens=60,
        do_sample=False,
        pad_token_id=0,
        stopping_criteria=StoppingCriteriaList([LoopStoppingCriteria(3, max_period=8, min_repeats=3)]),
    )
    assert stopped.shape[1] < plain.shape[1]
    # it stopped exactly when the loop closed
    assert tail_loop_period(stopped, 3, max_period=8, min_repeats=3).item() > 0
    assert tail_loop_period(stopped[:, :-1], 3, max_period=8, min_repeats=3).item() == 0


def test_loop_breaking_and_prompt_excluded_penalty() -> None:
    ids = torch.tensor([[7, 1, 2, 1, 2, 1, 2]])
    scores = torch.zeros(1, 10)
    scores[0, 1], scores[0, 2] = 4.0, -1.0
    out = LoopBreakingProcessor(prompt_length=1, penalty=2.0, min_repeats=3)(ids, scores.clone())
    assert out[0, 1] == 2.0 and out[0, 2] == -1.0  # 1 would close "1 2 1 2 1 2 1" (period 2, three times): penalised
    scores = torch.full((1, 10), 3.0)
    out = PromptExcludedRepetitionPenalty(1.5, prompt_length=2)(torch.tensor([[4, 5, 6, 6]]), scores.clone())
    assert out[0, 6] == 2.0 and out[0, 4] == 3.0 and out[0, 5] == 3.0  # prompt tokens 4 and 5 untouched
    model = _looping_model()
    prompt = torch.tensor([[1, 2, 3]])
    broken = model.generate(
        prompt,
        max_new_tokens=40,
        do_sample=False,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([LoopBreakingProcessor(3, penalty=1e4, max_period=8, min_repeats=3)]),
    )
    from kexue.repetition.metrics import find_loops

    assert not find_loops([broken[0, 3:].tolist()], max_period=8, min_repeats=3).looped[0]


def test_transition_matrix_from_a_causal_lm() -> None:
    from kexue.repetition.measure import exact_r
    from kexue.repetition.transition import from_model

    model = _looping_model()
    seqs = torch.randint(0, 12, (4, 10), generator=torch.Generator().manual_seed(0))
    P = from_model(model, seqs)
    assert P.shape == (12, 12) and abs(P.sum(1) - 1).max() < 1e-12
    # row of token t equals the mean next-token distribution at the positions holding t
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=seqs).logits.double(), -1)
    t = int(seqs[0, 0])
    mask = seqs == t
    assert abs(P[t] - probs[mask].mean(0).numpy()).max() < 1e-12
    assert 0 < exact_r(P) < float("inf")


def test_loop_criteria_equal_the_vllm_and_article_definitions_step_by_step() -> None:
    import random

    from kexue.repetition.hooks_reference import article_repeats, vllm_repeats

    rng = random.Random(0)
    for _ in range(60):
        P, B = rng.randint(0, 5), 3
        T = P + rng.randint(1, 50)
        rows = []
        for _ in range(B):
            s = [rng.randrange(4) for _ in range(T)]
            if rng.random() < 0.6:
                k, c = rng.randint(1, 7), rng.randint(0, T - 1)
                s = s[:c] + (s[c : c + k] * 60)[: T - c]
            rows.append(s[:T])
        event, r, hi = rng.choice(["article", "vllm"]), rng.randint(2, 3), rng.randint(1, 8)
        lo, budget = rng.randint(1, hi), rng.choice([0, 0, 3])
        crit = LoopStoppingCriteria(P, max_period=hi, min_repeats=r, min_period=lo, event=event, loop_budget=budget)
        rule = (
            partial(vllm_repeats, max_pattern_size=hi, min_pattern_size=lo, min_count=r)
            if event == "vllm"
            else partial(article_repeats, max_period=hi, min_period=lo, min_repeats=r)
        )
        spent, stopped = [0] * B, [None] * B
        x = torch.tensor(rows)
        for t in range(P + 1, T + 1):
            got = crit(x[:, :t], None).tolist()
            for b in range(B):
                k = rule(rows[b][P:t])
                spent[b] += k > 0
                if stopped[b] is None and k and spent[b] > budget:
                    stopped[b] = k
            assert got == [s is not None for s in stopped]
        assert [h.period if h else None for h in crit.hits] == stopped
        fresh = LoopStoppingCriteria(P, max_period=hi, min_repeats=r, min_period=lo, event=event, loop_budget=budget)
        assert fresh(x, None).tolist() == [s is not None for s in stopped]  # rebuilt from the ids: same answer


def test_vllm_parameters_and_the_difference_between_the_two_events() -> None:
    ids = torch.tensor([[9, 1, 2, 1, 2, 1, 2]])  # after the prompt: "1 2" three times, not back at "1"
    vllm = LoopStoppingCriteria.from_vllm(1, max_pattern_size=4, min_count=3)
    assert vllm(ids, None).item() and vllm.hits[0].period == 2 and vllm.hits[0].pattern == (1, 2)
    article = dict(max_period=4, min_repeats=3)
    assert not LoopStoppingCriteria(1, **article)(ids, None).item()  # the article's event needs the closing "1"
    assert LoopStoppingCriteria(1, **article)(torch.cat([ids, torch.tensor([[1]])], 1), None).item()
    too_short = LoopStoppingCriteria.from_vllm(1, max_pattern_size=4, min_count=3, min_pattern_size=3)
    assert not too_short(ids, None).item()  # period 2 < min size
    with pytest.raises(ValueError, match="min_count"):
        LoopStoppingCriteria.from_vllm(0, max_pattern_size=4, min_count=1)
    with pytest.raises(ValueError, match="min_period"):
        LoopStoppingCriteria(0, max_period=4, min_repeats=3, min_period=5)
    with pytest.raises(ValueError, match="event"):
        LoopStoppingCriteria(0, event="ngram")


def test_multi_line_loops_are_found_where_dry_is_blind() -> None:
    from kexue.repetition.dry import DRYLogitsProcessor

    nl = 0
    block = [1, 2, 3, 4, 5, nl, 6, 7, 8, 9, nl, 10, 11, 12, 13, 14, 15, nl]  # three lines, period 18
    dry = DRYLogitsProcessor(1.0, base=1.75, allowed_length=2, breaker_ids=[[nl]])
    twice = torch.tensor([[20] + block * 2 + block[:4]])
    many = torch.tensor([[20] + block * 12 + block[:4]])
    # DRY only sees back to the last newline: the penalty on the next token is the same after 2 or 12 copies
    assert torch.equal(dry.penalties(twice, 21), dry.penalties(many, 21))
    assert dry.penalties(many, 21)[0, 5].item() == pytest.approx(1.75**2)  # "1 2 3 4" repeated: 4 − 2 = 2
    crit = LoopStoppingCriteria(1, max_period=64, min_repeats=3)
    assert crit(many, None).item() and crit.hits[0].period == len(block)
    assert crit.hits[0].repeats > 3 and crit.hits[0].start == 1


def test_loop_budget_inside_generate_and_the_report() -> None:
    model = _looping_model()
    prompt = torch.tensor([[1, 2, 3]])
    runs = {}
    for budget in (0, 5):
        crit = LoopStoppingCriteria(3, max_period=8, min_repeats=3, loop_budget=budget)
        out = model.generate(
            prompt, max_new_tokens=80, do_sample=False, pad_token_id=0, stopping_criteria=StoppingCriteriaList([crit])
        )
        runs[budget] = (out, crit.hits[0])
    (first, hit0), (later, hit5) = runs[0], runs[5]
    assert later.shape[1] == first.shape[1] + 5  # a greedy loop stays a loop: 5 more tokens, then stop
    assert torch.equal(later[:, : first.shape[1]], first)
    assert (
        hit0.spent == 1
        and hit5.spent == 6
        and hit0.period == hit5.period == tail_loop_period(first, 3, max_period=8, min_repeats=3).item()
    )
    assert hit0.pattern == tuple(first[0, -hit0.period :].tolist()) and hit0.end == first.shape[1] - 1


def test_loop_stopping_refuses_a_prompt_length_longer_than_the_sequences() -> None:
    from kexue.repetition.hf import LoopStoppingCriteria

    with pytest.raises(ValueError, match="prompt_length=9 is longer than the sequences"):
        LoopStoppingCriteria(prompt_length=9)(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 3))
