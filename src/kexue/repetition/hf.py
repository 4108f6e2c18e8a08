"""HuggingFace ``generate`` hooks: stop at a loop, break a loop, penalise repeats outside the prompt.

The loop test is the article's event on the tail of each sequence: the last ``(r − 1)k + k + 1``
tokens have period ``k`` for some ``k ≤ max_period`` (a cycle walked ``r`` times, back at its
start; ``r = min_repeats``). Only generated tokens count: a prompt that already repeats does
not trigger it.

.. code-block:: python

    from transformers import LogitsProcessorList, StoppingCriteriaList
    from kexue.repetition.hf import LoopStoppingCriteria, PromptExcludedRepetitionPenalty

    out = model.generate(**inputs, max_new_tokens=200,
                         stopping_criteria=StoppingCriteriaList([LoopStoppingCriteria(inputs["input_ids"].shape[1])]),
                         logits_processor=LogitsProcessorList([PromptExcludedRepetitionPenalty(1.2, inputs["input_ids"].shape[1])]))
"""

from __future__ import annotations

import torch

from kexue._optional import require_extra

require_extra("kexue.repetition.hf (the generate hooks)", "transformers")

from transformers import LogitsProcessor, StoppingCriteria  # noqa: E402

from kexue._shared import check_int, check_number  # noqa: E402

__all__ = ["LoopBreakingProcessor", "LoopStoppingCriteria", "PromptExcludedRepetitionPenalty", "tail_loop_period"]


def tail_loop_period(ids: torch.Tensor, start: int, max_period: int, min_repeats: int) -> torch.Tensor:
    """Per row, the smallest period ``k`` whose event ends at the last token (0 if none);
    only tokens from ``start`` on are looked at."""
    generated = ids[:, start:]
    B, T = generated.shape
    period = torch.zeros(B, dtype=torch.long, device=ids.device)
    for k in range(max_period, 0, -1):  # smallest period wins: assign from largest down
        need = (min_repeats - 1) * k + 1
        if need + k > T:
            continue
        tail = generated[:, T - need - k :]
        hit = (tail[:, k:] == tail[:, :-k]).all(dim=1)
        period = torch.where(hit, torch.full_like(period, k), period)
    return period


class LoopStoppingCriteria(StoppingCriteria):
    """Stop a sequence as soon as its generated tail closes a loop (per-row for batches)."""

    def __init__(self, prompt_length: int, max_period: int = 32, min_repeats: int = 3) -> None:
        self.prompt_length = check_int("prompt_length", prompt_length, 0)
        self.max_period = check_int("max_period", max_period, 1)
        self.min_repeats = check_int("min_repeats", min_repeats, 2)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return tail_loop_period(input_ids, self.prompt_length, self.max_period, self.min_repeats) > 0


class LoopBreakingProcessor(LogitsProcessor):
    """When the generated tail is one step away from closing a loop, divide the logit of the
    token that would close it by ``penalty`` (multiply if negative), as HF's repetition penalty does."""

    def __init__(self, prompt_length: int, penalty: float = 2.0, max_period: int = 32, min_repeats: int = 2) -> None:
        self.prompt_length = check_int("prompt_length", prompt_length, 0)
        self.penalty = check_number("penalty", penalty, above=0)
        self.max_period = check_int("max_period", max_period, 1)
        self.min_repeats = check_int("min_repeats", min_repeats, 2)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        T = generated.shape[1]
        for k in range(1, self.max_period + 1):
            need = (self.min_repeats - 1) * k  # the next token would make it (r - 1)k + 1
            if need + k > T or need == 0:
                continue
            tail = generated[:, T - need - k :]
            about = (tail[:, k:] == tail[:, :-k]).all(dim=1)
            if about.any():
                nxt = generated[:, T - k]  # the token that continues the period
                rows = about.nonzero().flatten()
                logit = scores[rows, nxt[rows]]
                scores[rows, nxt[rows]] = torch.where(logit > 0, logit / self.penalty, logit * self.penalty)
        return scores


class PromptExcludedRepetitionPenalty(LogitsProcessor):
    """HF's multiplicative repetition penalty (Keskar et al. 2019) over generated tokens only:
    tokens that occur only in the prompt are not penalised."""

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty = check_number("penalty", penalty, above=0)
        self.prompt_length = check_int("prompt_length", prompt_length, 0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        logit = torch.gather(scores, 1, generated)
        logit = torch.where(logit > 0, logit / self.penalty, logit * self.penalty)
        return scores.scatter(1, generated, logit)
