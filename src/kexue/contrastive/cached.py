"""The article's cached gradient accumulation: the exact large-batch gradient at micro-batch memory.

For a loss that couples every sample of a batch (InfoNCE), summing micro-batch losses is not
the batch loss, so ordinary accumulation gives the wrong gradient. The article's procedure:

1. forward every micro-batch without gradient and keep the embeddings ``h``;
2. compute the true loss ``L(h)`` and the per-sample gradients ``g_i = ∂L/∂h_i`` (here by
   autograd on the cached embeddings, which also gives the temperature's gradient);
3. re-run each micro-batch with gradient and backpropagate ``Σ_i ⟨h_i, g_i⟩`` (its value is
   not the loss; its gradient is the loss's).

Step 3 must see the same randomness as step 1, or dropout breaks exactness (the article's
admitted limit, which rules out SimCSE). kexue saves the RNG state of the CPU and of every
device the encoders use (their parameters, the batch tensors, or ``devices=``) before each
micro-batch in step 1 and restores them in step 3, then leaves the generators where step 1
left them. Autocast runs on the same devices' type. No step waits for the device between
micro-batches (no ``.item()``; the surrogate's value stays a tensor). BatchNorm in training
mode couples the samples of a micro-batch and is rejected.

Across processes (``distributed=True``, launched by ``torchrun``), step 2 runs on the
all-gathered embeddings of every rank, so each rank's negatives include every other rank's
samples; each rank backpropagates the gradient of the *global* loss for its own samples, and
the encoders' parameter gradients are then summed over ranks. Every rank ends with the exact
gradient of the global-batch loss (a sum over ranks, not a mean: do not rescale it).

Reference: Su Jianlin, "Can contrastive learning use gradient accumulation?",
https://kexue.fm/archives/8471; Gao et al.,
GradCache, arXiv:2101.06983; Gao et al., SimCSE, arXiv:2104.08821.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import nn

from kexue._device import RngState, autocast_device_type, devices_of
from kexue._shared import check_int, check_process_group
from kexue.contrastive import distributed as dist_utils

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["CachedStep", "cached_backward", "encode", "naive_accumulation_backward", "slice_batch"]

Batch = Any  # a tensor, a mapping of tensors (tokenizer output), or a list
Encoder = Callable[[Batch], Any]  # a micro-batch -> (n, D) embeddings (or a sentence-transformers output dict)


def batch_size(batch: Batch) -> int:
    """Number of samples in a batch (first dimension; all entries of a mapping must agree)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        sizes = {batch_size(v) for v in batch.values() if isinstance(v, (torch.Tensor, list, tuple))}
        if len(sizes) != 1:
            raise ValueError(
                f"the entries of a batch mapping must share one first dimension; got sizes {sorted(sizes)}"
            )
        return sizes.pop()
    if isinstance(batch, (list, tuple)):
        return len(batch)
    raise TypeError(f"a batch must be a tensor, a mapping of tensors or a list; got {type(batch).__name__}")


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Samples ``start:stop`` of a batch (tensors, mappings of tensors, lists).

    Args:
        batch: a tensor (split along dim 0), a mapping of them (other entries kept as they
            are), or a list.
        start: the first sample.
        stop: one past the last sample.

    Returns:
        The samples, in the batch's own form.

    Example:
        >>> slice_batch({"input_ids": torch.arange(6).reshape(3, 2), "name": "q"}, 1, 3)["input_ids"]
        tensor([[2, 3],
                [4, 5]])
    """
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {
            k: (slice_batch(v, start, stop) if isinstance(v, (torch.Tensor, list, tuple)) else v)
            for k, v in batch.items()
        }
    return batch[start:stop]


def encode(encoder: Encoder, batch: Batch) -> torch.Tensor:
    """Call ``encoder`` and return ``(n, D)`` embeddings (sentence-transformers dicts are unwrapped).

    Args:
        encoder: maps ``batch`` to ``(n, D)`` embeddings or to a mapping holding them under
            ``"sentence_embedding"`` (a ``SentenceTransformer``'s output).
        batch: the encoder's input.

    Returns:
        The ``(n, D)`` embeddings.

    Raises:
        ValueError: when the encoder returns anything else.

    Example:
        >>> encode(lambda x: {"sentence_embedding": 2 * x}, torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """
    out = encoder(batch)
    if isinstance(out, Mapping):
        if "sentence_embedding" not in out:
            raise ValueError(
                "the encoder returned a mapping without 'sentence_embedding'; "
                "wrap it in a function that returns (n, D) embeddings"
            )
        out = out["sentence_embedding"]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            f"the encoder must return (n, D) embeddings; got {type(out).__name__} {getattr(out, 'shape', '')}"
        )
    return out


def _check_batchnorm(encoder: object) -> None:
    if isinstance(encoder, nn.Module):
        for name, module in encoder.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                raise ValueError(
                    f"module {name or type(encoder).__name__!r} is a BatchNorm in training mode: it couples the "
                    "samples of a micro-batch, so the cached gradient would not be the full-batch gradient; call "
                    ".eval() on it or use LayerNorm"
                )


def check_devices(devices: object) -> list[torch.device]:
    """``devices`` as a list of ``torch.device`` (each a ``torch.device``, a string like ``"cuda:0"`` or a
    CUDA index)."""
    if isinstance(devices, (str, int, torch.device)) or not isinstance(devices, (list, tuple, set, frozenset)):
        raise TypeError(f"devices must be a list of devices (torch.device, 'cuda:0', or a CUDA index); got {devices!r}")
    parsed = []
    for device in devices:
        if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
            raise TypeError(f"devices must hold torch.device, str or int entries; got {device!r}")
        try:
            parsed.append(torch.device("cuda", device) if isinstance(device, int) else torch.device(device))
        except RuntimeError as exc:
            raise ValueError(f"devices holds {device!r}, which is not a device ('cpu', 'cuda:0', ...)") from exc
    return parsed


def encoder_devices(
    towers: Sequence[object], sides: Sequence[Batch], *, devices: Sequence[torch.device | str | int] | None = None
) -> list[torch.device]:
    """The devices the encoders compute on: ``devices`` when given, else those of the encoders that are
    modules (parameters and buffers) and of the batch tensors.

    A plain function with text batches shows no device; pass ``devices`` for it (its RNG replay
    then also covers every initialised CUDA device, see :func:`replayed_devices`).
    """
    if devices is not None:
        return check_devices(devices)
    return devices_of(*[t for t in towers if isinstance(t, nn.Module)], *sides)


def replayed_devices(towers: Sequence[object], used: Sequence[torch.device]) -> list[torch.device]:
    """The devices whose generators the RNG replay saves: ``used``, and every initialised CUDA device
    when an encoder is a plain function (its devices cannot be seen; saving an idle generator is harmless)."""
    opaque = any(not isinstance(t, nn.Module) for t in towers)
    if opaque and torch.cuda.is_available() and torch.cuda.is_initialized():
        return [*used, *(torch.device("cuda", i) for i in range(torch.cuda.device_count()))]
    return list(used)


def _autocast(dtype: torch.dtype | None, devices: Sequence[torch.device]) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` on the encoders' device type (a null context without ``dtype``)."""
    if dtype is None:
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16; got {dtype!r}")
    return torch.autocast(autocast_device_type(devices), dtype=dtype)


@dataclass
class CachedStep:
    """What one cached step did.

    Args:
        loss: the true batch loss (detached), computed in step 2.
        surrogate: ``Σ_i ⟨h_i, g_i⟩`` summed over micro-batches, a detached scalar tensor on the
            loss's device (its value is NOT the loss; kept a tensor so the loop never waits for it).
        embeddings: the cached embeddings of each side (detached).
        seconds: time of the no-grad forward, the loss, and the grad pass (host time: on an
            accelerator the work may still be queued).
    """

    loss: torch.Tensor
    surrogate: torch.Tensor
    embeddings: list[torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)


def _micro(size: int, micro_batch_size: int) -> list[tuple[int, int]]:
    return [(i, min(i + micro_batch_size, size)) for i in range(0, size, micro_batch_size)]


def _towers(encoders: Encoder | Sequence[Encoder], sides: list[Batch]) -> list[Encoder]:
    towers: list[Encoder] = (
        list(encoders) if isinstance(encoders, (list, tuple)) else [cast("Encoder", encoders)] * len(sides)
    )
    if len(towers) != len(sides):
        raise ValueError(f"got {len(towers)} encoders for {len(sides)} batches; pass one encoder, or one per batch")
    for tower in towers:
        if not callable(tower):
            raise TypeError(
                "encoders must be callables (an nn.Module, a sentence-transformers model, a function); "
                f"got {type(tower).__name__}"
            )
        _check_batchnorm(tower)
    return towers


def cached_backward(
    encoders: Encoder | Sequence[Encoder],
    batches: Batch | Sequence[Batch],
    loss_fn: Callable[..., torch.Tensor],
    *,
    micro_batch_size: int,
    replay_rng: bool = True,
    scale_loss: float = 1.0,
    autocast: torch.dtype | None = None,
    devices: Sequence[torch.device | str | int] | None = None,
    validate: bool = True,
    distributed: bool = False,
    group: ProcessGroup | None = None,
) -> CachedStep:
    """Compute the batch loss and leave its exact gradient in every parameter's ``.grad``.

    The procedure reads as its three jobs: :func:`embed_without_grad` (step 1),
    :func:`loss_and_embedding_grads` (step 2, after gathering the ranks' embeddings with
    ``distributed``) and :func:`replay_backward` (step 3).

    Args:
        encoders: one encoder, or one per side (separate query/document towers). An encoder
            maps a micro-batch to ``(n, D)`` embeddings (an ``nn.Module``, a
            sentence-transformers model, or any callable).
        batches: one batch per side (e.g. ``[queries, documents]``; with one encoder, it
            encodes every side). Tensors, tokenizer dicts or lists, split along dim 0.
        loss_fn: ``loss_fn(*embeddings) -> scalar``, e.g. an :class:`InfoNCE` module with
            targets bound in a lambda; parameters it owns (a learnable temperature) get their
            gradient too.
        micro_batch_size: samples per forward with gradient; peak activation memory scales
            with it, not with the batch.
        replay_rng: restore each micro-batch's RNG state in the grad pass (exact with dropout):
            the CPU generator and that of every device in ``devices``.
        scale_loss: multiply the loss (and gradients) by this, e.g. ``1/k`` for k accumulated steps.
        autocast: run the encoders under ``torch.autocast`` with this dtype (``torch.bfloat16``
            or ``torch.float16``) in both passes, on the device type of ``devices``; embeddings
            are cached, and the loss and its gradient computed, in float32. With float16 on CUDA,
            pass ``scale_loss`` (or use a ``GradScaler`` on the returned loss's scale) as you
            would for any fp16 training.
        devices: the devices the encoders compute on. Default: those of the encoders that are
            modules and of the batch tensors. Give it when an encoder is a plain function fed
            texts (it shows no device): ``devices=[model.device]``.
        validate: raise on a non-finite loss (one host synchronisation per call, after the loss;
            ``False``: none at all).
        distributed: gather every rank's embeddings (``torch.distributed`` must be initialised,
            e.g. by ``torchrun``; gloo or NCCL) so that negatives come from the global batch.
            Ranks may hold different numbers of samples. Encoders wrapped in
            ``DistributedDataParallel`` or FSDP2 (``fully_shard``) reduce their gradients once
            per step (see :class:`kexue.contrastive.distributed.StepSync`).
        group: the process group (default: the world).

    Returns:
        :class:`CachedStep`. Gradients are *accumulated* into ``.grad`` (zero them first).
        With ``distributed=True``, ``embeddings`` are the global (gathered) ones.

    Raises:
        ValueError: on a BatchNorm in training mode, mismatched encoders/batches, an autocast
            dtype other than bfloat16/float16, or ``distributed=True`` without an initialised
            process group.
        FloatingPointError: when the loss is not finite (with ``validate``).

    Example:
        >>> from kexue.contrastive import InfoNCE
        >>> encoder = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 8))
        >>> x = torch.randn(32, 8)
        >>> step = cached_backward(encoder, [x, x], InfoNCE(temperature=0.05), micro_batch_size=8)
        >>> step.loss.shape, encoder[0].weight.grad.shape
        (torch.Size([]), torch.Size([16, 8]))
    """
    check_int("micro_batch_size", micro_batch_size, 1)
    sides = split_sides(batches)
    towers = _towers(encoders, sides)
    used = encoder_devices(towers, sides, devices=devices)
    amp = _autocast(autocast, used)
    if distributed:
        check_process_group()
    dist_utils.check_fsdp_counts(towers, sum(len(_micro(batch_size(b), micro_batch_size)) for b in sides), group=group)
    rng = replayed_devices(towers, used)

    start = time.perf_counter()
    cached, states = embed_without_grad(towers, sides, micro_batch_size=micro_batch_size, amp=amp, rng=rng)
    after_forward = RngState(rng)
    forward_s = time.perf_counter() - start

    start = time.perf_counter()
    cached, offsets = _gather_sides(cached, distributed=distributed, group=group)
    loss, grads = loss_and_embedding_grads(loss_fn, cached, scale_loss=scale_loss, validate=validate)
    loss_s = time.perf_counter() - start

    start = time.perf_counter()
    sync = dist_utils.StepSync(towers, distributed=distributed, group=group)
    items = _side_items(towers, sides, grads, offsets, states if replay_rng else None, micro_batch_size)
    terms = replay_backward(items, sum(len(s) for s in states), sync, amp=amp, weight=sync.scale)
    surrogate = torch.stack([t.to(grads[0].device) for t in terms]).sum() if terms else grads[0].new_zeros(())
    if distributed:
        surrogate = dist_utils.sum_tensor(surrogate, group=group)
    after_forward.restore()
    seconds = {"forward_no_grad": forward_s, "loss": loss_s, "grad_pass": time.perf_counter() - start}
    return CachedStep(loss=loss.detach(), surrogate=surrogate, embeddings=[h.detach() for h in cached], seconds=seconds)


def embed_without_grad(
    towers: Sequence[Encoder],
    sides: Sequence[Batch],
    *,
    micro_batch_size: int,
    amp: contextlib.AbstractContextManager[Any],
    rng: Sequence[torch.device],
) -> tuple[list[torch.Tensor], list[list[RngState]]]:
    """Step 1: embed every micro-batch without gradient, saving the RNG state before each.

    Half-precision embeddings are cached in float32 (the loss is computed in float32).

    Args:
        towers: the encoder of each side.
        sides: the batch of each side.
        micro_batch_size: samples per micro-batch.
        amp: the autocast context of the encoders' forwards.
        rng: the devices whose generators are saved before each micro-batch.

    Returns:
        ``(embeddings of each side, the RNG states of each side's micro-batches)``.
    """
    cached: list[torch.Tensor] = []
    states: list[list[RngState]] = []
    with torch.no_grad():
        for tower, batch in zip(towers, sides, strict=True):
            parts, side_states = [], []
            for lo, hi in _micro(batch_size(batch), micro_batch_size):
                side_states.append(RngState(rng))
                with amp:
                    h = encode(tower, slice_batch(batch, lo, hi))
                parts.append(h.float() if h.dtype in (torch.float16, torch.bfloat16) else h)
            cached.append(torch.cat(parts))
            states.append(side_states)
    return cached, states


def _gather_sides(
    cached: list[torch.Tensor], *, distributed: bool, group: ProcessGroup | None
) -> tuple[list[torch.Tensor], list[int]]:
    """Every rank's embeddings of each side with ``distributed`` (and this rank's offset in them)."""
    if not distributed:
        return cached, [0] * len(cached)
    gathered = [dist_utils.gather_rows(h, group=group) for h in cached]
    return [g for g, _ in gathered], [o for _, o in gathered]


def loss_and_embedding_grads(
    loss_fn: Callable[..., torch.Tensor], cached: Sequence[torch.Tensor], *, scale_loss: float, validate: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Step 2: the true loss on the cached embeddings and ``∂L/∂h`` (the loss's own parameters get their gradient).

    Args:
        loss_fn: ``loss_fn(*embeddings) -> scalar``.
        cached: the cached embeddings of each side.
        scale_loss: the factor of the loss (and of every gradient).
        validate: raise ``FloatingPointError`` on a non-finite loss (one host synchronisation).

    Returns:
        ``(the scaled loss, ∂L/∂h of each side)``.
    """
    leaves = [h.detach().requires_grad_(True) for h in cached]
    with torch.enable_grad():
        loss = loss_fn(*leaves) * scale_loss
        if validate and loss.device.type != "meta" and not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(
                f"the contrastive loss is {float(loss.detach())}; check the embeddings and the temperature"
            )
        loss.backward()
    return loss, [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]


class ReplayItem(NamedTuple):
    """One micro-batch of the grad pass (step 3).

    Args:
        encoder: the encoder that embeds it.
        inputs: the micro-batch.
        grad: ``∂L/∂h`` of its rows (the dtype its ``⟨h, g⟩`` is computed in).
        rng: the RNG state saved before its no-grad forward (``None``: not replayed).
    """

    encoder: Encoder
    inputs: Batch
    grad: torch.Tensor
    rng: RngState | None


def replay_backward(
    items: Iterable[ReplayItem],
    count: int,
    sync: dist_utils.StepSync,
    *,
    amp: contextlib.AbstractContextManager[Any] | None = None,
    weight: float | torch.Tensor = 1.0,
) -> list[torch.Tensor]:
    """Step 3: replay each micro-batch with gradient and backpropagate ``weight · ⟨h, g⟩``.

    Serves :func:`cached_backward` and the backward of
    :class:`~kexue.contrastive.st_loss.CachedContrastiveLoss`. One gradient reduction per step
    (``sync``, finished here); nothing waits for the device: the terms stay tensors.

    Args:
        items: the micro-batches, in the order of the no-grad pass (may be a generator).
        count: how many there are (the last one lets ``sync`` reduce).
        sync: the step's :class:`~kexue.contrastive.distributed.StepSync`.
        amp: the autocast context of the encoders' forwards (default: none).
        weight: the factor of each backward (``1.0``: none; a tensor: the incoming gradient).

    Returns:
        Each micro-batch's ``⟨h, g⟩`` (detached, unweighted).
    """
    amp = contextlib.nullcontext() if amp is None else amp
    terms: list[torch.Tensor] = []
    with torch.enable_grad():  # the items are sliced in grad mode too (inputs that require grad keep it)
        for number, item in enumerate(items, 1):
            if item.rng is not None:
                item.rng.restore()
            with sync.micro_batch(last=number == count):
                with amp:
                    h = encode(item.encoder, item.inputs)
                term = (h.to(item.grad.dtype) * item.grad).sum()  # ∂/∂h = g, rounded to h's dtype on the way back
                (term if isinstance(weight, float) and weight == 1.0 else term * weight).backward()
            terms.append(term.detach())
    sync.finish()
    return terms


def _side_items(
    towers: Sequence[Encoder],
    sides: Sequence[Batch],
    grads: Sequence[torch.Tensor],
    offsets: Sequence[int],
    states: list[list[RngState]] | None,
    micro_batch_size: int,
) -> Iterator[ReplayItem]:
    """The micro-batches of :func:`cached_backward`'s grad pass, sliced as they are replayed."""
    for index, (tower, batch, grad, offset) in enumerate(zip(towers, sides, grads, offsets, strict=True)):
        for number, (lo, hi) in enumerate(_micro(batch_size(batch), micro_batch_size)):
            rng = states[index][number] if states is not None else None
            yield ReplayItem(
                encoder=tower, inputs=slice_batch(batch, lo, hi), grad=grad[offset + lo : offset + hi], rng=rng
            )


def split_sides(batches: Batch | Sequence[Batch]) -> list[Batch]:
    """One batch per side: a list or tuple of batches as given, anything else (one tensor, one
    mapping, one list of strings: a side's samples) as the only side."""
    if isinstance(batches, (list, tuple)) and not (len(batches) > 0 and all(isinstance(b, str) for b in batches)):
        return list(batches)
    return [batches]


def naive_accumulation_backward(
    encoder: Encoder,
    batches: Sequence[Batch],
    loss_fn: Callable[..., torch.Tensor],
    *,
    micro_batch_size: int,
) -> float:
    """Ordinary gradient accumulation (the wrong answer, for comparison).

    The loss of each micro-batch on its own, backpropagated with weight ``1/n`` (``n``
    micro-batches): its gradient is not the batch loss's for a loss that couples the samples.

    Args:
        encoder: maps a micro-batch to ``(n, D)`` embeddings.
        batches: one batch per side.
        loss_fn: ``loss_fn(*embeddings) -> scalar``.
        micro_batch_size: samples per micro-batch.

    Returns:
        The mean of the micro-batch losses.

    Example:
        >>> from kexue.contrastive import InfoNCE
        >>> x = torch.randn(16, 4)
        >>> mean = naive_accumulation_backward(nn.Linear(4, 4), [x, x], InfoNCE(), micro_batch_size=4)
    """
    check_int("micro_batch_size", micro_batch_size, 1)
    sides = list(batches)
    n = batch_size(sides[0])
    chunks = _micro(n, micro_batch_size)
    total = 0.0
    for lo, hi in chunks:
        loss = loss_fn(*[encode(encoder, slice_batch(b, lo, hi)) for b in sides]) / len(chunks)
        loss.backward()
        total += float(loss.detach())
    return total
