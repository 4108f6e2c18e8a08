"""Check the cached gradient against the full-batch one on your own model and batch.

:func:`verify_cached_gradients` runs one cached step and then the same batch in one graph (every
micro-batch forwarded with gradient and kept, the loss of the whole batch, one backward), from
the same RNG state, so dropout draws the same masks in both: with RNG replay the two gradients
are the same function of the same masks, and they differ by float rounding only. It returns the
relative error per parameter group (the model's embeddings, each numbered layer, the loss's own
parameters) and leaves the model's gradients and the RNG state as it found them.

Two forms:

* ``loss`` is a :class:`~kexue.contrastive.st_loss.CachedContrastiveLoss`: ``batch`` is the
  trainer's columns, tokenised (a list of feature dicts) or as lists of texts (tokenised here);
* ``loss`` is any loss on embeddings (e.g. :class:`~kexue.contrastive.losses.InfoNCE`):
  ``batch`` is one batch per side for :func:`~kexue.contrastive.cached.cached_backward`, with
  ``micro_batch_size`` and, optionally, ``encoder`` (default: ``model`` itself).

A parameter whose true gradient is zero (a softmax attention's key bias) holds float32 noise;
a group whose reference gradient is below ``1e-6`` of the whole gradient's norm is measured
against the whole gradient's norm instead of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from kexue._device import RngState, devices_of
from kexue._shared import check_int, check_number
from kexue.contrastive.cached import (
    Encoder,
    _micro,
    batch_size,
    cached_backward,
    encode,
    replayed_devices,
    slice_batch,
    split_sides,
)
from kexue.contrastive.st_loss import CachedContrastiveLoss, take, tokenized

__all__ = ["GradientCheck", "parameter_group", "verify_cached_gradients"]

_NUMBERED = re.compile(r"^\d+$")


@dataclass
class GradientCheck:
    """The result of :func:`verify_cached_gradients`.

    Args:
        errors: parameter group → ``‖g_cached − g_full‖ / ‖g_full‖`` (see the module docstring
            for groups whose true gradient is zero).
        tolerance: the bound each error is held to.
        loss_cached: the cached step's loss.
        loss_full: the full batch's loss (equal to ``loss_cached`` up to rounding).
        micro_batches: micro-batches of the cached step.
    """

    errors: dict[str, float]
    tolerance: float
    loss_cached: float
    loss_full: float
    micro_batches: int

    @property
    def max_error(self) -> float:
        """The largest error of any group (0 without groups)."""
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether every group's error is within ``tolerance``."""
        return self.max_error <= self.tolerance

    def rows(self) -> list[tuple[str, float]]:
        """``(group, error)`` pairs, in the model's parameter order.

        Returns:
            The rows of a report table.
        """
        return list(self.errors.items())


def parameter_group(name: str) -> str:
    """The group of a parameter name: its path up to the first numbered layer after the root
    (``0.auto_model.encoder.layer.3``), else its first three parts (``0.auto_model.embeddings``).

    Args:
        name: a dotted parameter name.

    Returns:
        The name of its group.

    Example:
        >>> parameter_group("0.auto_model.encoder.layer.3.attention.self.query.weight")
        '0.auto_model.encoder.layer.3'
        >>> parameter_group("0.auto_model.embeddings.word_embeddings.weight")
        '0.auto_model.embeddings'
    """
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        if _NUMBERED.match(parts[i]):
            return ".".join(parts[: i + 1])
    return ".".join(parts[: min(3, len(parts) - 1)]) or name


def _params(model: nn.Module, loss: object) -> list[tuple[str, nn.Parameter]]:
    seen: dict[int, tuple[str, nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            seen.setdefault(id(p), (name, p))
    if isinstance(loss, nn.Module):
        for name, p in loss.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen[id(p)] = (f"loss.{name}", p)
    return list(seen.values())


def _take_grads(params: list[tuple[str, nn.Parameter]]) -> list[torch.Tensor]:
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for _, p in params]
    for _, p in params:
        p.grad = None
    return grads


def _errors(
    params: list[tuple[str, nn.Parameter]], cached: list[torch.Tensor], full: list[torch.Tensor]
) -> dict[str, float]:
    total = float(torch.cat([g.double().flatten() for g in full]).norm()) if full else 0.0
    diff: dict[str, float] = {}
    norm: dict[str, float] = {}
    for (name, _), a, b in zip(params, cached, full, strict=True):
        group = parameter_group(name)
        diff[group] = diff.get(group, 0.0) + float((a.double() - b.double()).square().sum())
        norm[group] = norm.get(group, 0.0) + float(b.double().square().sum())
    floor = 1e-6 * total
    return {g: (diff[g] ** 0.5) / max(norm[g] ** 0.5, floor, 1e-300) for g in diff}


def verify_cached_gradients(
    model: nn.Module,
    batch: Any,
    loss: CachedContrastiveLoss | Callable[..., torch.Tensor],
    *,
    micro_batch_size: int | None = None,
    encoder: Encoder | None = None,
    tolerance: float = 1e-4,
) -> GradientCheck:
    """Compare the cached gradient with the full-batch gradient on ``model`` and ``batch``.

    Args:
        model: the module whose parameters are compared (a ``SentenceTransformer``, any encoder).
        batch: see the module docstring (columns for the sentence-transformers loss, sides for
            ``cached_backward``).
        loss: a ``CachedContrastiveLoss``, or a loss on embeddings.
        micro_batch_size: the cached step's micro-batch (loss-on-embeddings form only).
        encoder: maps a micro-batch to embeddings (default ``model``; e.g. a function that
            tokenises texts first).
        tolerance: the relative error allowed per group (1e-4 suits float32; float64 models
            agree to about 1e-12).

    Returns:
        :class:`GradientCheck`; ``.passed`` says whether every group is within ``tolerance``.

    Example:
        >>> from kexue.contrastive import InfoNCE
        >>> encoder = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 4)).double()
        >>> x = torch.randn(12, 4, dtype=torch.float64)
        >>> verify_cached_gradients(encoder, [x, x], InfoNCE(), micro_batch_size=4).passed
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (its parameters are compared); got {type(model).__name__}")
    check_number("tolerance", tolerance, above=0)
    params = _params(model, loss)
    saved = [p.grad for _, p in params]  # the caller's gradients, put back at the end
    for _, p in params:
        p.grad = None
    devices = devices_of(model, batch)  # an encoder function fed texts shows none: the model's are its
    state = RngState(replayed_devices([encoder or model], devices))
    try:
        if isinstance(loss, CachedContrastiveLoss):
            result = _check_st_loss(model, batch, loss, params, state)
        else:
            if micro_batch_size is None:
                raise ValueError(
                    "micro_batch_size is required when loss is a loss on embeddings (the cached step's micro-batch)"
                )
            check_int("micro_batch_size", micro_batch_size, 1)
            result = _check_embedding_loss(encoder or model, batch, loss, micro_batch_size, params, state, devices)
    finally:
        for (_, p), g in zip(params, saved, strict=True):
            p.grad = g
        state.restore()
    return GradientCheck(
        errors=_errors(params, result.cached, result.full),
        tolerance=float(tolerance),
        loss_cached=result.loss_cached,
        loss_full=result.loss_full,
        micro_batches=result.micro_batches,
    )


class _Measured(NamedTuple):
    """The two gradients (one tensor per parameter) and losses of one check."""

    cached: list[torch.Tensor]
    full: list[torch.Tensor]
    loss_cached: float
    loss_full: float
    micro_batches: int


def _features(model: Any, batch: Sequence[Any]) -> list[dict[str, Any]]:
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError("batch must be the loss's columns: a list of tokenised feature dicts, or of lists of texts")
    if all(isinstance(column, dict) for column in batch):
        return list(batch)
    if getattr(model, "preprocess", None) is None and getattr(model, "tokenize", None) is None:
        raise ValueError("texts need a model with preprocess/tokenize (a SentenceTransformer); pass tokenised features")
    return [tokenized(model, column) for column in batch]


def _check_st_loss(
    model: nn.Module,
    batch: Sequence[Any],
    loss: CachedContrastiveLoss,
    params: list[tuple[str, nn.Parameter]],
    state: RngState,
) -> _Measured:
    if loss.distributed:
        raise ValueError("verify_cached_gradients runs in one process: use a loss with distributed=False")
    features = _features(model, batch)
    value = loss(features)
    value.backward()
    cached = _take_grads(params)
    state.restore()
    # the full batch: the same micro-batches in the same order (so the same dropout masks), one graph
    reps = [
        [encode(loss.model, take(f, index, width)) for index, width in zip(plan.groups, plan.widths, strict=True)]
        for f, plan in zip(features, loss._plans, strict=True)
    ]
    reference = loss.calculate_loss(reps)
    reference.backward()
    full = _take_grads(params)
    return _Measured(
        cached=cached,
        full=full,
        loss_cached=float(value.detach()),
        loss_full=float(reference.detach()),
        micro_batches=sum(len(p.groups) for p in loss._plans),
    )


def _check_embedding_loss(
    encoder: Encoder,
    batch: Any,
    loss_fn: Callable[..., torch.Tensor],
    micro_batch_size: int,
    params: list[tuple[str, nn.Parameter]],
    state: RngState,
    devices: list[torch.device],
) -> _Measured:
    step = cached_backward(encoder, batch, loss_fn, micro_batch_size=micro_batch_size, devices=devices)
    cached = _take_grads(params)
    state.restore()
    sides = split_sides(batch)
    embeddings = [
        torch.cat([encode(encoder, slice_batch(side, lo, hi)) for lo, hi in _micro(batch_size(side), micro_batch_size)])
        for side in sides
    ]
    reference = loss_fn(*embeddings)
    reference.backward()
    full = _take_grads(params)
    count = sum(len(_micro(batch_size(side), micro_batch_size)) for side in sides)
    return _Measured(
        cached=cached,
        full=full,
        loss_cached=float(step.loss),
        loss_full=float(reference.detach()),
        micro_batches=count,
    )
