"""HuggingFace ``generate`` hooks: stop at a loop (with a budget), break a loop, penalise repeats
outside the prompt. DRY lives in :mod:`kexue.repetition.dry`.

The loop tests look at the tail of each sequence: the article's event (the last ``r k + 1``
tokens are a cycle of ``k`` tokens walked ``r`` times, back at its start; ``r = min_repeats``)
or vLLM's (the last ``r k`` tokens are one pattern repeated ``r`` times). Only generated tokens
count: a prompt that already repeats does not trigger them. :func:`tail_loop_period` is the
stateless form of the article's test.

.. code-block:: python

    from transformers import LogitsProcessorList, StoppingCriteriaList
    from kexue.repetition.hf import LoopStoppingCriteria, PromptExcludedRepetitionPenalty

    prompt_length = inputs["input_ids"].shape[1]
    penalty = PromptExcludedRepetitionPenalty(1.2, prompt_length=prompt_length)
    out = model.generate(**inputs, max_new_tokens=200,
                         stopping_criteria=StoppingCriteriaList([LoopStoppingCriteria(prompt_length)]),
                         logits_processor=LogitsProcessorList([penalty]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast, get_args

import torch

from kexue._optional import require_extra

require_extra("kexue.repetition.hf (the generate hooks)", "transformers")

from transformers import LogitsProcessor, StoppingCriteria  # noqa: E402

from kexue._shared import check_choice, check_int, check_number  # noqa: E402
from kexue.repetition._steps import RowTracker, extends  # noqa: E402

__all__ = [
    "LoopBreakingProcessor",
    "LoopHit",
    "LoopStoppingCriteria",
    "PromptExcludedRepetitionPenalty",
    "tail_loop_period",
]


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


@dataclass(frozen=True)
class LoopHit:
    """The loop that stopped a row: its ``period`` and ``pattern`` (the last ``period`` token ids),
    where the periodic run starts and ends in ``input_ids`` (``end`` = the last token), how many
    times the pattern has been walked, and the loop tokens spent (tokens generated while a loop
    held, the budget's count)."""

    row: int
    period: int
    pattern: tuple[int, ...]
    start: int
    end: int
    repeats: float
    spent: int

    def text(self, tokenizer: _Decoder) -> str:
        """The pattern decoded with ``tokenizer``.

        Args:
            tokenizer: anything with ``decode(ids)`` (an HF tokenizer).

        Returns:
            The pattern's text.
        """
        return tokenizer.decode(list(self.pattern))


class _Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


LoopEvent = Literal["article", "vllm"]
_EVENTS: tuple[LoopEvent, ...] = get_args(LoopEvent)


class LoopStoppingCriteria(StoppingCriteria):
    """Stop a row when its generated tail loops, optionally after a budget of loop tokens.

    Two loop rules, both on generated tokens only (a prompt that repeats does not count), with
    periods ``k`` in ``[min_period, max_period]`` and ``r = min_repeats``:

    * ``event="article"`` (default): the article's event, the last ``r k + 1`` tokens are a cycle
      of ``k`` tokens walked ``r`` times and back at its first token;
    * ``event="vllm"``: vLLM's repetition detection (``RepetitionDetectionParams``: ``max_pattern_size``,
      ``min_pattern_size``, ``min_count``; :meth:`from_vllm` takes those names): the last ``r k``
      tokens are one pattern of ``k`` tokens repeated ``r`` times.

    Both are thresholds on ``run_k``, the number of consecutive latest positions ``t`` with
    ``x_t = x_{t−k}`` (article: ``run_k ≥ (r − 1)k + 1``; vLLM: ``run_k ≥ (r − 1)k``). The criteria
    keep ``run_k`` for every ``k ≤ max_period`` and update all of them in one vectorised step per
    token, so long periods cost little: a loop of several lines (a period of hundreds of tokens)
    is found like a short one, and nothing resets at a newline (DRY's sequence breakers do, which
    makes DRY blind to multi-line loops). The smallest firing period is reported.

    ``loop_budget``: how many more tokens a row may generate while a loop holds (counted over all
    its loops) before it is stopped; 0 stops at the first loop. After ``generate``, ``hits[b]``
    is the :class:`LoopHit` that stopped row ``b`` (``None`` if it was not stopped by a loop).
    State is kept on ``input_ids``' device between calls of one ``generate`` run and no value is read
    on the host per token: a call with one more token than the previous call's and the same batch
    size is the next step (rows matched on the device to the rows they extend, which follows beam
    search's reordering); any other shape starts a run from the ids. A new run whose first ids have
    exactly the shape of the previous run's next step must call :meth:`reset` first.
    """

    def __init__(
        self,
        prompt_length: int,
        *,
        max_period: int = 32,
        min_repeats: int = 3,
        min_period: int = 1,
        event: LoopEvent = "article",
        loop_budget: int = 0,
    ) -> None:
        self.prompt_length = check_int("prompt_length", prompt_length, 0)
        self.max_period = check_int("max_period", max_period, 1)
        self.min_repeats = check_int("min_repeats", min_repeats, 2)
        self.min_period = check_int("min_period", min_period, 1)
        if self.min_period > self.max_period:
            raise ValueError(f"min_period={min_period!r} must be <= max_period={max_period!r}")
        self.event = check_choice("event", event, _EVENTS)
        self.loop_budget = check_int("loop_budget", loop_budget, 0)
        self._ids: torch.Tensor | None = None
        self._rows = RowTracker()

    @classmethod
    def from_vllm(
        cls,
        prompt_length: int,
        *,
        max_pattern_size: int,
        min_count: int,
        min_pattern_size: int = 0,
        loop_budget: int = 0,
    ) -> LoopStoppingCriteria:
        """vLLM's parameters and reading of them: ``min_pattern_size <= 0`` means 1; vLLM turns the
        check off for ``max_pattern_size <= 0`` or ``min_count < 2``, which here is an error
        (leave the criteria out instead)."""
        check_int("max_pattern_size", max_pattern_size, 1)
        check_int("min_count", min_count, 2)
        if isinstance(min_pattern_size, bool) or not isinstance(min_pattern_size, int):
            raise ValueError(f"min_pattern_size={min_pattern_size!r} must be an integer")
        return cls(
            prompt_length,
            max_period=max_pattern_size,
            min_repeats=min_count,
            min_period=max(min_pattern_size, 1),
            event="vllm",
            loop_budget=loop_budget,
        )

    def _reset(self, B: int, device: torch.device) -> None:
        self._run = torch.zeros(B, self.max_period, dtype=torch.long, device=device)
        self._spent = torch.zeros(B, dtype=torch.long, device=device)
        k = torch.arange(1, self.max_period + 1, device=device)
        self._need = (self.min_repeats - 1) * k + (1 if self.event == "article" else 0)
        self._need[: self.min_period - 1] = torch.iinfo(torch.long).max  # periods below min_period never fire
        # the stopping record, per row, on the device: stopped, and period, run, end, spent at that token
        self._stopped = torch.zeros(B, dtype=torch.bool, device=device)
        self._record = torch.zeros(4, B, dtype=torch.long, device=device)

    def _reorder(self, src: torch.Tensor) -> None:
        """Rows continue the previous rows ``src`` (beam search's reordering; the identity otherwise)."""
        self._run, self._spent = self._run.index_select(0, src), self._spent.index_select(0, src)
        self._stopped, self._record = self._stopped.index_select(0, src), self._record.index_select(1, src)

    def _advance(self, ids: torch.Tensor) -> None:
        """Take in the last token of ``ids`` (device tensors only: nothing is read on the host)."""
        e = ids.shape[1] - 1
        K = self.max_period
        lag = torch.arange(1, K + 1, device=ids.device)
        back = ids.index_select(1, (e - lag).clamp(min=0))  # (B, K): x_{e-k}
        same = (back == ids[:, e : e + 1]) & ((e - lag) >= self.prompt_length)[None]
        self._run = torch.where(same, self._run + 1, 0)
        firing = self._run >= self._need[None]
        looping = firing.any(dim=1)
        self._spent += looping.long()
        self._ids = ids
        new = looping & (self._spent > self.loop_budget) & ~self._stopped
        first = firing.int().argmax(dim=1)  # the smallest firing period - 1
        run = self._run.gather(1, first[:, None])[:, 0]
        now = torch.stack([first + 1, run, torch.full_like(run, e), self._spent])
        self._record = torch.where(new[None], now, self._record)
        self._stopped = self._stopped | new

    @property
    def hits(self) -> list[LoopHit | None]:
        """Per row of the last run, the :class:`LoopHit` that stopped it (``None`` if none). Reading it
        copies the record to the host: do it after ``generate``, not inside the loop."""
        if self._ids is None:
            return []
        stopped, (period, run, end, spent) = self._stopped.tolist(), self._record.tolist()
        ids = self._ids
        return [
            LoopHit(
                row=b,
                period=period[b],
                pattern=tuple(ids[b, end[b] - period[b] + 1 : end[b] + 1].tolist()),
                start=end[b] - run[b] - period[b] + 1,
                end=end[b],
                repeats=(run[b] + period[b]) / period[b],
                spent=spent[b],
            )
            if stopped[b]
            else None
            for b in range(len(stopped))
        ]

    def reset(self) -> None:
        """Forget the state: the next call starts a run from its ids (needed only when a new run's
        first ids have exactly the shape of the previous run's next step)."""
        self._ids = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        B, T = input_ids.shape
        if T < self.prompt_length:
            raise ValueError(
                f"prompt_length={self.prompt_length} is longer than the sequences ({T} tokens): pass the "
                "prompt's length, input_ids.shape[1] of the prompt given to generate"
            )
        prev = self._ids
        if extends(input_ids, prev):
            if B > 1:  # a batch of one can only continue itself
                self._reorder(self._rows.sources(input_ids))
            self._advance(input_ids)
        else:
            self._reset(B, input_ids.device)
            for t in range(self.prompt_length + 1, T + 1):
                self._advance(input_ids[:, :t])
            self._ids = input_ids
            if B > 1:
                self._rows.start(input_ids)
        return cast(torch.BoolTensor, self._stopped.clone())  # torch types a bool tensor as Tensor


class LoopBreakingProcessor(LogitsProcessor):
    """When the generated tail is one step away from closing a loop, divide the logit of the
    token that would close it by ``penalty`` (multiply if negative), as HF's repetition penalty does."""

    def __init__(self, prompt_length: int, *, penalty: float = 2.0, max_period: int = 32, min_repeats: int = 2) -> None:
        self.prompt_length = check_int("prompt_length", prompt_length, 0)
        self.penalty = check_number("penalty", penalty, above=0)
        self.max_period = check_int("max_period", max_period, 1)
        self.min_repeats = check_int("min_repeats", min_repeats, 2)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Penalise, in place, per period ``k`` in increasing order, the rows about to close a loop
        (branch-free on the device: the other rows get their own logit back)."""
        generated = input_ids[:, self.prompt_length :]
        T = generated.shape[1]
        for k in range(1, self.max_period + 1):
            need = (self.min_repeats - 1) * k  # the next token would make it (r - 1)k + 1
            if need + k > T or need == 0:
                continue
            tail = generated[:, T - need - k :]
            about = (tail[:, k:] == tail[:, :-k]).all(dim=1, keepdim=True)
            nxt = generated[:, T - k : T - k + 1]  # the token that continues the period
            logit = scores.gather(1, nxt)
            penalised = torch.where(logit > 0, logit / self.penalty, logit * self.penalty)
            scores.scatter_(1, nxt, torch.where(about, penalised, logit))
        return scores


class PromptExcludedRepetitionPenalty(LogitsProcessor):
    """HF's multiplicative repetition penalty (Keskar et al. 2019) over generated tokens only:
    tokens that occur only in the prompt are not penalised."""

    def __init__(self, penalty: float, *, prompt_length: int) -> None:
        self.penalty = check_number("penalty", penalty, above=0)
        self.prompt_length = check_int("prompt_length", prompt_length, 0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        logit = torch.gather(scores, 1, generated)
        logit = torch.where(logit > 0, logit / self.penalty, logit * self.penalty)
        return cast(torch.FloatTensor, scores.scatter(1, generated, logit))  # torch's typing: Tensor
