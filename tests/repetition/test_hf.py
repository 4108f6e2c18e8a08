"""The generate hooks: loop stopping, loop breaking, prompt-excluded penalty, with model.generate."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList, StoppingCriteriaList

from kexue.repetition.hf import LoopBreakingProcessor, LoopStoppingCriteria, PromptExcludedRepetitionPenalty, tail_loop_period


def test_tail_loop_period_ignores_the_prompt() -> None:
    ids = torch.tensor([[1, 2, 1, 2, 1, 2, 1], [5, 6, 7, 8, 9, 10, 11], [3, 3, 3, 4, 4, 4, 4]])
    assert tail_loop_period(ids, 0, 4, 3).tolist() == [2, 0, 1]
    assert tail_loop_period(ids, 3, 4, 3).tolist() == [0, 0, 1]  # rows 0's loop is mostly prompt


def _looping_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128))
    return model.eval()


def test_generate_stops_at_the_first_loop() -> None:
    model = _looping_model()
    prompt = torch.tensor([[1, 2, 3]])
    plain = model.generate(prompt, max_new_tokens=60, do_sample=False, pad_token_id=0)
    from kexue.repetition.metrics import find_loops

    assert find_loops([plain[0, 3:].tolist()], 8, 3).looped[0]
    stopped = model.generate(prompt, max_new_tokens=60, do_sample=False, pad_token_id=0,
                             stopping_criteria=StoppingCriteriaList([LoopStoppingCriteria(3, max_period=8, min_repeats=3)]))
    assert stopped.shape[1] < plain.shape[1]
    assert tail_loop_period(stopped, 3, 8, 3).item() > 0  # it stopped exactly when the loop closed
    assert tail_loop_period(stopped[:, :-1], 3, 8, 3).item() == 0


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
    broken = model.generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=0,
                            logits_processor=LogitsProcessorList([LoopBreakingProcessor(3, penalty=1e4, max_period=8, min_repeats=3)]))
    from kexue.repetition.metrics import find_loops

    assert not find_loops([broken[0, 3:].tolist()], 8, 3).looped[0]


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
