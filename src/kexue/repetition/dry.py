"""DRY ("Don't Repeat Yourself") for HF ``generate``, with llama.cpp's parameters and semantics.

DRY (p-e-w, text-generation-webui PR 5677; the llama.cpp sampler ``dry``, ported from koboldcpp)
penalises the token that would *extend* a repeat of the recent context. Take the last ``N``
tokens ``x₀ … x_e`` (the window). For every earlier position ``i < e``, let ``n(i)`` be the
length of the longest common suffix of ``x₀ … x_i`` and ``x₀ … x_e`` that stays inside the
window, capped by ``rep_limit``, the number of tokens after the most recent sequence breaker.
Emitting ``x_{i+1}`` next would make that repeat one longer, so each token ``y`` gets
``n(y) = max {n(i) : x_{i+1} = y}`` and, when ``n(y) ≥ allowed_length``,

.. math:: \\text{logit}_y \\mathrel{-}= \\text{multiplier}
          · \\text{base}^{\\min(n(y) − \\text{allowed\\_length},\\; e_{max})},
          \\qquad e_{max} = ⌊88.7228391 / \\ln \\text{base}⌋ \\ (\\text{base} > 1),

so a repeat of ``allowed_length`` tokens is penalised by ``multiplier`` and every further
repeated token multiplies the penalty by ``base`` (``e_max`` keeps the float32 power finite).

Parameters, as llama.cpp names and reads them (``--dry-*``):

* ``multiplier`` (``dry_multiplier``): the penalty scale; 0 turns DRY off (llama.cpp's default).
* ``base`` (``dry_base``, default 1.75): growth per extra repeated token; must be ``≥ 1``.
* ``allowed_length`` (``dry_allowed_length``, default 2): repeats shorter than this are free.
* ``penalty_last_n`` (``dry_penalty_last_n``, default −1): the window; −1 = the whole sequence
  (llama.cpp: the context size), 0 turns DRY off, ``N > 0`` the last ``N`` tokens.
* ``sequence_breakers`` (``dry_sequence_breakers``, default ``"\\n"``, ``":"``, ``'"'``, ``"*"``):
  strings, turned into token sequences with the model's tokenizer the way llama.cpp does
  (:func:`breaker_sequences`): a vocabulary token whose text contains the string is a one-token
  breaker; a token whose text ends with a proper prefix of the string is the head of a breaker
  whose tail is the tokenised rest of the string (strings cut to 40 characters, tails to 20
  tokens). A repeat never reaches back across the most recent breaker, and one-token breakers
  are never penalised themselves.

kexue's additions: ``prompt_length`` makes the window start after the prompt (llama.cpp's server
feeds the prompt into the sampler, so the default, ``None``, counts it too: a prompt that quotes
itself is penalised); ``breaker_ids`` gives breakers as token-id sequences for models without an
HF tokenizer. Batched: every row has its own repeats and breakers. The processor keeps, per row,
the common-suffix length at every earlier position and updates it in one vectorised step per
generated token (``c_i ← (x_i = x_e)(c_{i−1} + 1)``), so a ``generate`` call with the KV cache
costs ``O(B·T)`` per step (``O(B²·T)`` to match rows, for beam search's reordering).

Devices. Every step runs on ``input_ids``' device and reads no value on the host (no ``.item()``,
no ``torch.equal``): a call whose ids have one more token than the previous call's and the same
batch size is the next step (each row continues the previous row it extends: itself, or its parent
beam); any other shape rebuilds the state from the ids (the first call of a ``generate`` run; on a
GPU it copies the breaker tables to the device once). A new run whose first ids happen to have the
shape of the previous run's next step must call :meth:`DRYLogitsProcessor.reset` first.

Padding tokens are tokens to DRY, as they would be to llama.cpp: with left-padded prompts pass
``prompt_length`` (the padded prompt width) to leave them out.

References:
    p-e-w, "DRY: A modern repetition penalty that reliably prevents looping",
    oobabooga/text-generation-webui pull request 5677 (2024); llama.cpp ``src/llama-sampling.cpp``
    (``llama_sampler_dry``), koboldcpp pull request 982. The article: kexue.fm/archives/8128.

Example:
    >>> import torch
    >>> dry = DRYLogitsProcessor(0.8, breaker_ids=[])
    >>> ids = torch.tensor([[1, 2, 3, 3, 2, 3, 9, 1, 2, 3]])  # "a b c c b c y a b c"
    >>> out = dry(ids, torch.zeros(1, 10))
    >>> round(float(-out[0, 3]), 3), round(float(-out[0, 9]), 3)  # "c" extends "a b c" (3), "y" extends "b c" (2)
    (1.4, 0.8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, cast

import torch

from kexue._optional import require_extra

require_extra("kexue.repetition.dry (the DRY logits processor)", "transformers")

from transformers import LogitsProcessor  # noqa: E402

from kexue._shared import check_int, check_number  # noqa: E402
from kexue.repetition._steps import RowTracker, extends  # noqa: E402

__all__ = ["DEFAULT_SEQUENCE_BREAKERS", "DRYLogitsProcessor", "breaker_sequences", "dry_max_exponent"]

DEFAULT_SEQUENCE_BREAKERS = ("\n", ":", '"', "*")
_MAX_BREAKER_CHARS = 40  # llama.cpp's MAX_CHAR_LEN
_MAX_BREAKER_TAIL = 20  # llama.cpp's MAX_SEQ_LEN
_FLOAT_MAX_LOG = 88.7228391  # ln of float32's largest value


def dry_max_exponent(base: float) -> int | None:
    """The largest exponent llama.cpp lets ``base`` reach (``None``: no clamp, for ``base ≤ 1.000001``)."""
    return int(_FLOAT_MAX_LOG / math.log(base)) if base > 1.000001 else None


class _Tokenizer(Protocol):
    """What DRY needs of a tokenizer (an HF tokenizer has it; ``batch_decode`` is used when present)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def __len__(self) -> int: ...


def _encode(tokenizer: _Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in ids]


def breaker_sequences(tokenizer: _Tokenizer, strings: Sequence[str]) -> list[tuple[int, tuple[int, ...]]]:
    """llama.cpp's sequence breakers for ``tokenizer``: ``(head, tail)`` token sequences.

    For each breaker string ``s`` (cut to 40 characters; empty strings are an error): every
    vocabulary token whose text contains ``s`` gives ``(token, ())``; every token whose text
    ``w`` does not contain ``s`` but ends with a proper prefix of it (``w[p:] = s[:m]`` for a
    position ``p`` of ``s[0]`` in ``w``) gives ``(token, encode(s[m:])[:20])``. Token texts are
    ``tokenizer.decode([id])`` (special tokens included), as llama.cpp detokenises each id.
    """
    if isinstance(strings, str):
        raise TypeError("sequence_breakers must be a list of strings, not one string (wrap it in a list)")
    batch_decode = getattr(tokenizer, "batch_decode", None)
    texts = (
        batch_decode([[i] for i in range(len(tokenizer))])
        if batch_decode is not None
        else [tokenizer.decode([i]) for i in range(len(tokenizer))]
    )
    out: dict[tuple[int, tuple[int, ...]], None] = {}
    for s in strings:
        if not isinstance(s, str) or not s:
            raise ValueError(f"sequence_breakers: {s!r} is not a non-empty string")
        s = s[:_MAX_BREAKER_CHARS]
        tails: dict[int, tuple[int, ...]] = {}  # prefix length m -> tokenised rest, computed once
        for token, word in enumerate(texts):
            if s in word:
                out[(token, ())] = None
                continue
            pos = word.find(s[0])
            while pos != -1:
                m = len(word) - pos
                if m < len(s) and word[pos:] == s[:m]:
                    if m not in tails:
                        tails[m] = tuple(_encode(tokenizer, s[m:])[:_MAX_BREAKER_TAIL])
                    out[(token, tails[m])] = None
                pos = word.find(s[0], pos + 1)
    return list(out)


class DRYLogitsProcessor(LogitsProcessor):
    """DRY as an HF ``LogitsProcessor`` (module docstring: parameters, rule, state).

    Args:
        multiplier: penalty scale (``dry_multiplier``); ``≥ 0``, 0 disables.
        base: growth per extra repeated token (``dry_base``); ``≥ 1``.
        allowed_length: longest free repeat (``dry_allowed_length``); ``≥ 1``.
        penalty_last_n: window (``dry_penalty_last_n``): −1 all tokens, 0 off, ``N`` the last ``N``.
        sequence_breakers: breaker strings (default llama.cpp's ``"\\n" ":" '"' "*"``), tokenised
            with ``tokenizer``; ``[]`` for none.
        tokenizer: the model's tokenizer (``batch_decode``/``decode``, ``encode``, ``len``);
            needed for string breakers.
        breaker_ids: breakers as token-id sequences instead (head first); excludes the strings.
        prompt_length: start the window after this many tokens (the prompt); ``None`` counts them.

    Put it in ``logits_processor=LogitsProcessorList([...])``: HF runs custom processors before
    its temperature/top-k/top-p warpers, the order of llama.cpp's chain (penalties, DRY, top-k …).
    """

    # the state of a run, per row (see _advance)
    _suffix: torch.Tensor  # (B, e): common-suffix length of x[:i+1] and x[:e+1] for every i < e
    _breaker_at: torch.Tensor  # (B,): head position of the most recent sequence breaker (-1: none)
    _breaker_tail: torch.Tensor  # (B,): the length of that breaker's tail
    # tables (see _tables and _cover)
    _single: torch.Tensor  # one-token breakers by id, plus the overflow slot
    _ok: torch.Tensor  # ~_single: the ids that may be penalised
    _multi: dict[int, torch.Tensor]  # longer breakers by tail length, (M, n + 1)
    _amounts: torch.Tensor  # penalty by repeat length
    _reach: torch.Tensor

    def __init__(
        self,
        multiplier: float,
        *,
        base: float = 1.75,
        allowed_length: int = 2,
        penalty_last_n: int = -1,
        sequence_breakers: Sequence[str] | None = None,
        tokenizer: _Tokenizer | None = None,
        breaker_ids: Sequence[Sequence[int]] | None = None,
        prompt_length: int | None = None,
    ) -> None:
        self.multiplier = check_number("multiplier", multiplier)
        if self.multiplier < 0:
            raise ValueError(f"multiplier={multiplier!r} must be >= 0 (0 turns DRY off)")
        self.base = check_number("base", base)
        if self.base < 1:
            raise ValueError(
                f"base={base!r} must be >= 1 (llama.cpp treats a smaller base as DRY off; pass multiplier=0 for that)"
            )
        self.allowed_length = check_int("allowed_length", allowed_length, 1)
        if isinstance(penalty_last_n, bool) or not isinstance(penalty_last_n, int) or penalty_last_n < -1:
            raise ValueError(
                f"penalty_last_n={penalty_last_n!r} must be -1 (whole sequence), 0 (off) or a positive integer"
            )
        self.penalty_last_n = penalty_last_n
        self.prompt_length = None if prompt_length is None else check_int("prompt_length", prompt_length, 0)
        self.breakers = self._breakers(sequence_breakers, tokenizer, breaker_ids)
        self._max_exp = dry_max_exponent(self.base)
        self._device: torch.device | None = None
        self._ids: torch.Tensor | None = None
        self._rows = RowTracker()

    @staticmethod
    def _breakers(
        strings: Sequence[str] | None, tokenizer: _Tokenizer | None, breaker_ids: Sequence[Sequence[int]] | None
    ) -> list[tuple[int, tuple[int, ...]]]:
        if breaker_ids is not None:
            if strings is not None:
                raise ValueError(
                    "give sequence_breakers (strings, with tokenizer) or breaker_ids (token ids), not both"
                )
            out = []
            for given in breaker_ids:
                seq = [int(t) for t in given]
                if not seq or min(seq) < 0:
                    raise ValueError(f"breaker_ids: {seq!r} is not a non-empty sequence of token ids >= 0")
                out.append((seq[0], tuple(seq[1:])))
            return list(dict.fromkeys(out))
        strings = DEFAULT_SEQUENCE_BREAKERS if strings is None else strings
        if not strings:
            return []
        if tokenizer is None:
            raise ValueError(
                "sequence_breakers are strings: pass tokenizer= (the model's) to tokenise them, "
                "or breaker_ids= (token-id sequences), or sequence_breakers=[] for none"
            )
        return breaker_sequences(tokenizer, strings)

    @property
    def enabled(self) -> bool:
        """Whether DRY does anything (``multiplier`` and ``penalty_last_n`` not 0)."""
        return self.multiplier != 0 and self.penalty_last_n != 0

    def _tables(self, device: torch.device) -> None:
        """One-token breakers as a lookup table; longer ones grouped by tail length (copied to the
        device once, at the first call there)."""
        singles = [h for h, t in self.breakers if not t]
        size = max([h for h, _ in self.breakers] + [0]) + 2  # + the overflow slot (see _lookup)
        single = torch.zeros(size, dtype=torch.bool)
        if singles:
            single[torch.tensor(singles)] = True
        self._single = single.to(device)
        multi: dict[int, list[list[int]]] = {}
        for h, t in self.breakers:
            if t:
                multi.setdefault(len(t), []).append([h, *t])
        self._multi = {n: torch.tensor(rows).to(device) for n, rows in multi.items()}  # (M, n + 1)
        self._amounts = torch.zeros(0, device=device)
        self._ok = ~self._single
        self._device = device

    @staticmethod
    def _lookup(table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``table[tokens]`` as one contiguous ``index_select`` (plain indexing with a strided index
        tensor takes a slow path, badly so on a busy multi-threaded CPU). Ids beyond the table read its
        last entry, the overflow slot: the tables cover the vocabulary and every breaker, so such ids
        (never penalised, never breakers) need no host-side check of the largest id."""
        return table.index_select(0, tokens.reshape(-1).clamp(max=table.shape[0] - 1)).view(tokens.shape)

    def _is_single(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._lookup(self._single, tokens)

    @staticmethod
    def _by_length(table: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``table[lengths]`` for indices the table is known to cover (no clamp)."""
        return table.index_select(0, lengths.reshape(-1)).view(lengths.shape)

    def _cover(self, size: int, length: int, device: torch.device) -> None:
        """Grow the breaker table to ``size`` ids (plus the overflow slot) and the penalty table to
        ``length`` repeats, computed on the device (no host-to-device copy)."""
        if self._single.shape[0] < size + 1:
            self._single = torch.nn.functional.pad(self._single, (0, size + 1 - self._single.shape[0]))
            self._ok = ~self._single
        if self._amounts.shape[0] <= length:
            n = torch.arange(2 * length + 2, dtype=torch.float64, device=device)
            exponent = n - self.allowed_length
            if self._max_exp is not None:
                exponent = exponent.clamp(max=self._max_exp)
            amount = self.multiplier * torch.pow(
                torch.full((), self.base, dtype=torch.float64, device=device), exponent
            )
            self._amounts = torch.where(n >= self.allowed_length, amount, 0.0).float()  # by repeat length
            self._reach = torch.arange(1, 2 * length + 2, device=device)

    def _advance(self, ids: torch.Tensor) -> None:
        """Take in the last token of ``ids`` (the state covers ``ids[:, :-1]``)."""
        e = ids.shape[1] - 1
        last = ids[:, e]
        # most recent breaker: its head position and its longest complete tail
        hit = self._is_single(last)
        self._breaker_at = torch.where(hit, e, self._breaker_at)
        self._breaker_tail = torch.where(hit, 0, self._breaker_tail)
        for n, patterns in self._multi.items():
            if e < n:
                continue
            window = ids[:, e - n :]  # (B, n + 1)
            done = (window[:, None, :] == patterns[None]).all(dim=2).any(dim=1)
            h = e - n
            newer = done & ((h > self._breaker_at) | ((h == self._breaker_at) & (n > self._breaker_tail)))
            self._breaker_at = torch.where(newer, h, self._breaker_at)
            self._breaker_tail = torch.where(newer, n, self._breaker_tail)
        # common-suffix length of x[:i+1] and x[:e+1] for every i < e
        eq = ids[:, :e] == last[:, None]  # (B, e)
        shifted = torch.nn.functional.pad(self._suffix, (1, 0))  # c_{i-1} of the previous end
        self._suffix = torch.where(eq, shifted + 1, 0)
        self._ids = ids

    def _rebuild(self, ids: torch.Tensor) -> None:
        B = ids.shape[0]
        self._suffix = torch.zeros(B, 0, dtype=torch.long, device=ids.device)
        self._breaker_at = torch.full((B,), -1, dtype=torch.long, device=ids.device)
        self._breaker_tail = torch.zeros(B, dtype=torch.long, device=ids.device)
        for t in range(1, ids.shape[1] + 1):
            self._advance(ids[:, :t])

    def _sync(self, ids: torch.Tensor, vocab_size: int) -> None:
        """Bring the state to ``ids``: one step when they have the shape of the next token (rows matched
        to the rows they extend on the device, so beam search's reordering is followed), else a
        rebuild from the ids. Nothing is read on the host."""
        prev = self._ids
        if extends(ids, prev):
            if ids.shape[0] > 1:  # a batch of one can only continue itself
                src = self._rows.sources(ids)
                self._suffix, self._breaker_at, self._breaker_tail = (
                    self._suffix.index_select(0, src),
                    self._breaker_at.index_select(0, src),
                    self._breaker_tail.index_select(0, src),
                )
            self._cover(vocab_size, ids.shape[1], ids.device)
            self._advance(ids)
            return
        if self._device != ids.device:
            self._tables(ids.device)
        self._cover(vocab_size, ids.shape[1], ids.device)
        self._rebuild(ids)
        if ids.shape[0] > 1:
            self._rows.start(ids)

    def reset(self) -> None:
        """Forget the state: the next call rebuilds it from its ids (needed only when a new run's first
        ids have exactly the shape of the previous run's next step)."""
        self._ids = None

    def penalties(self, input_ids: torch.LongTensor, vocab_size: int) -> torch.Tensor:
        """``(B, vocab_size)`` float32 amounts DRY subtracts from the next logits."""
        B, T = input_ids.shape
        start = self.prompt_length or 0
        if self.penalty_last_n > 0:
            start = max(start, T - self.penalty_last_n)
        width = T - start
        if not self.enabled or width <= self.allowed_length:
            return torch.zeros(B, vocab_size, dtype=torch.float32, device=input_ids.device)
        self._sync(input_ids, vocab_size)
        e = T - 1
        rep_limit = torch.where(self._breaker_at >= start, e - self._breaker_at - self._breaker_tail, width)  # (B,)
        cap = torch.minimum(
            self._reach[None, : width - 1], rep_limit[:, None]
        )  # reach: i - start + 1 for i = start .. e - 1
        count = torch.minimum(self._suffix[:, start:e], cap)  # (B, width - 1)
        follower = input_ids[:, start + 1 :].clamp(
            max=self._single.shape[0] - 1
        )  # ids past the tables: the overflow slot
        count = torch.where((count >= self.allowed_length) & self._by_length(self._ok, follower), count, 0)
        longest = torch.zeros(B, self._single.shape[0], dtype=torch.long, device=input_ids.device)
        longest.scatter_reduce_(1, follower, count, reduce="amax")
        return self._by_length(self._amounts, longest[:, :vocab_size])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.enabled:
            return scores
        penalised = scores - self.penalties(input_ids, scores.shape[1]).to(scores.dtype)
        return cast(torch.FloatTensor, penalised)  # torch's typing: Tensor
