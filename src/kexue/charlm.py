"""A character-level language-model workbench on tinyshakespeare, shared by the experiments of
several techniques (growth, mitchell, repetition): the corpus, batches, a deterministic
validation loss, a training loop for any causal LM that returns logits, and a FLOPs count.

FLOPs follow the usual accounting (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B):
a training token costs ``6 N + 12 L d_attn T`` with ``N`` the parameters of the matrix
multiplications (embedding look-ups excluded, the output head included), ``L`` layers,
``d_attn`` the attention width (heads × head dimension) and ``T`` the context length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kexue._shared import num_layers

__all__ = ["CharCorpus", "TrainLog", "evaluate", "flops_per_token", "train_steps"]


class CharCorpus:
    """Characters to ids (sorted alphabet) and a contiguous train/validation split.

    Args:
        text: the corpus.
        val_fraction: the share of the text, at its end, held out for validation.

    Raises:
        ValueError: ``text`` is empty.

    Example:
        >>> corpus = CharCorpus("abcabcabca" * 10)
        >>> corpus.vocab_size, len(corpus.train), len(corpus.val)
        (3, 90, 10)
        >>> corpus.decode(corpus.encode("cab"))
        'cab'
    """

    chars: list[str]
    stoi: dict[str, int]
    train: torch.Tensor
    val: torch.Tensor

    def __init__(self, text: str, *, val_fraction: float = 0.1) -> None:
        if not text:
            raise ValueError("text is empty")
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        cut = int(len(ids) * (1 - val_fraction))
        self.train, self.val = ids[:cut], ids[cut:]

    @property
    def vocab_size(self) -> int:
        """The number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """The ids of ``text``'s characters.

        Args:
            text: characters of the corpus's alphabet.

        Returns:
            A ``(len(text),)`` long tensor.
        """
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of ``ids``.

        Args:
            ids: character ids (ints or a tensor of them).

        Returns:
            The string.
        """
        return "".join(self.chars[int(i)] for i in ids)

    def batch(self, batch_size: int, context: int, generator: torch.Generator) -> torch.Tensor:
        """``(batch_size, context + 1)`` random training windows (inputs and shifted targets).

        Args:
            batch_size: the number of windows.
            context: the input length (each window holds one more character, the last target).
            generator: the random generator that places the windows.

        Returns:
            A ``(batch_size, context + 1)`` long tensor.
        """
        start = torch.randint(0, len(self.train) - context - 1, (batch_size,), generator=generator)
        return torch.stack([self.train[s : s + context + 1] for s in start.tolist()])


def _loss(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=window[:, :-1]).logits
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten())


def evaluate(model: nn.Module, corpus: CharCorpus, *, context: int, windows: int = 256) -> float:
    """Mean next-character cross-entropy (nats) over ``windows`` fixed, evenly spaced validation windows.

    Deterministic, so successive evaluations are comparable.

    Args:
        model: a causal LM called as ``model(input_ids=...)`` that returns ``.logits``.
        corpus: the corpus whose validation split is read.
        context: the input length of each window.
        windows: the number of windows.

    Returns:
        The mean loss in nats per character.
    """
    step = max(1, (len(corpus.val) - context - 1) // windows)
    starts = range(0, step * windows, step)
    data = torch.stack([corpus.val[s : s + context + 1] for s in starts])
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = sum(
            float(_loss(model, data[i : i + 16])) * len(data[i : i + 16]) for i in range(0, len(data), 16)
        ) / len(data)
    model.train(was)
    return loss


def flops_per_token(config: Any, *, context: int | None = None) -> float:
    """Training FLOPs per token (``6 N + 12 L d_attn T``, see the module docstring).

    Args:
        config: a Hugging Face config of a GPT-2 or a Llama-like model (typed ``Any``: each
            architecture names its fields).
        context: ``T``, by default the config's maximum length.

    Returns:
        The FLOPs of one training token.
    """
    layers = num_layers(config)
    if config.model_type == "gpt2":
        d, ff = config.n_embd, config.n_inner or 4 * config.n_embd
        d_attn, max_context, matrices = d, config.n_positions, 4 * d * d + 2 * d * ff
        vocab = config.vocab_size
    else:
        d, ff = config.hidden_size, config.intermediate_size
        head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        d_attn = config.num_attention_heads * head_dim
        gated = 3 if config.model_type in ("llama", "qwen2", "mistral") else 2
        matrices = 2 * d * d_attn + 2 * d * kv * head_dim + gated * d * ff
        max_context, vocab = config.max_position_embeddings, config.vocab_size
    n = layers * matrices + d * vocab
    return 6 * n + 12 * layers * d_attn * (max_context if context is None else context)


@dataclass
class TrainLog:
    """Validation loss after ``steps`` optimizer steps and ``flops`` training FLOPs."""

    steps: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    def add(self, step: int, flops: float, loss: float) -> None:
        """Append one evaluation.

        Args:
            step: the optimizer steps done.
            flops: the training FLOPs spent.
            loss: the validation loss.
        """
        self.steps.append(step)
        self.flops.append(flops)
        self.val_loss.append(loss)


def train_steps(
    model: nn.Module,
    corpus: CharCorpus,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch_size: int,
    context: int,
    generator: torch.Generator,
    eval_every: int,
    log: TrainLog | None = None,
    flops_offset: float = 0.0,
    step_offset: int = 0,
    lr_at: Callable[[int], float] | None = None,
    on_step: Callable[[], None] | None = None,
    eval_windows: int = 256,
    eval_at_start: bool = True,
) -> TrainLog:
    """Train ``steps`` steps (cross-entropy on random windows), evaluating every ``eval_every`` steps and at the end.

    Args:
        model: a causal LM with a Hugging Face ``.config``, called as ``model(input_ids=...)``.
        corpus: the training and validation text.
        optimizer: the optimizer of ``model``'s parameters.
        steps: the optimizer steps to take.
        batch_size: windows per step.
        context: the input length of each window.
        generator: the random generator of the windows.
        eval_every: steps between evaluations.
        log: the log to append to (default: a new one).
        flops_offset: FLOPs already spent (for a continued run).
        step_offset: steps already taken (for a continued run).
        lr_at: ``lr_at(step)`` sets the learning rate of every group before each step
            (``step`` counted from ``step_offset``).
        on_step: called after each optimizer step.
        eval_windows: the windows of each :func:`evaluate`.
        eval_at_start: ``False`` skips the evaluation before the first step (on an empty log).

    Returns:
        The log; FLOPs use :func:`flops_per_token` with the model's config (context ``context``).

    Raises:
        FloatingPointError: the loss became non-finite.
    """
    log = log if log is not None else TrainLog()
    per_token = flops_per_token(model.config, context=context)
    tokens = batch_size * context
    if not log.steps and eval_at_start:
        log.add(step_offset, flops_offset, evaluate(model, corpus, context=context, windows=eval_windows))
    model.train()
    for i in range(1, steps + 1):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step_offset + i)
        _step(model, optimizer, corpus.batch(batch_size, context, generator), step_offset + i)
        if on_step is not None:
            on_step()
        if i % eval_every == 0 or i == steps:
            loss = evaluate(model, corpus, context=context, windows=eval_windows)
            log.add(step_offset + i, flops_offset + i * tokens * per_token, loss)
    return log


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, window: torch.Tensor, step: int) -> None:
    """One optimizer step on ``window``; a FloatingPointError when the loss is not finite."""
    loss = _loss(model, window)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training diverged at step {step}: loss {float(loss)}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
