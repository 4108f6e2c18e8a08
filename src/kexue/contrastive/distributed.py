"""Cross-process negatives for the cached procedure (``torch.distributed``, gloo or NCCL).

Each rank holds its own samples. :func:`gather_rows` all-gathers the cached embeddings (ranks
may hold different numbers of rows), so the loss of step 2 is the loss of the global batch,
identical on every rank. Each rank's grad pass then yields only its own samples' share of the
parameter gradient; :func:`sum_grads` adds the shares, so every rank holds the exact global
gradient. Gradients already in ``.grad`` before the step (accumulation over several steps)
are set aside and added back afterwards, so they are not counted once per rank.

Launch with ``torchrun --nproc_per_node N your_script.py``; a worked check lives in
:mod:`kexue.contrastive._torchrun_check`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeGuard

import torch
import torch.distributed as dist
from torch import nn

from kexue._device import collective_device

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - torch < 2.6 has no public FSDP2
    _FSDP_TYPES: tuple[type, ...] = ()
else:
    _FSDP_TYPES = (FSDPModule,)

__all__ = ["StepSync", "check_fsdp_counts", "gather_rows", "gather_with_local", "sum_grads", "sum_tensor"]


def gather_rows(x: torch.Tensor, *, group: ProcessGroup | None = None) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` along dim 0 (row counts may differ by rank).

    The row counts travel on the backend's device (:func:`kexue._device.collective_device`) and
    reach the host once (the padded gather needs them); ``x`` must be on that device already
    (CUDA for NCCL).

    Args:
        x: this rank's rows.
        group: the process group (default: the world).

    Returns:
        ``(global rows in rank order, offset of this rank's rows)``.
    """
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=collective_device(group))
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    counts = torch.cat(sizes).tolist()
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    rows = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
    return rows, sum(counts[:rank])


def gather_with_local(x: torch.Tensor, *, group: ProcessGroup | None = None) -> tuple[torch.Tensor, int]:
    """:func:`gather_rows` keeping this rank's own rows as ``x`` itself, so gradients reach them.

    Args:
        x: this rank's rows.
        group: the process group (default: the world).

    Returns:
        ``(global rows in rank order, offset of this rank's rows)``.
    """
    rows, offset = gather_rows(x.detach(), group=group)
    return torch.cat((rows[:offset], x, rows[offset + x.shape[0] :])), offset


def _is_fsdp(module: object) -> TypeGuard[FSDPModule]:
    return isinstance(module, _FSDP_TYPES)


class StepSync:
    """Exactly one gradient reduction per step for the grad pass of a cached step.

    The grad pass runs one backward per micro-batch; a ``DistributedDataParallel`` or FSDP2
    (``fully_shard``) encoder would reduce gradients after every one of them (the complaint
    against cached losses: one all-reduce per micro-batch, and hangs when ranks hold different
    numbers of micro-batches). With ``distributed=True`` (the loss is the global-batch loss, the
    same on every rank, so the exact gradient is the *sum* of the ranks' shares):

    * DDP and plain encoders run every micro-batch without synchronisation (``no_sync``), and
      :meth:`finish` sums ``.grad`` over ranks in one flat all-reduce per dtype; gradients already
      in ``.grad`` (accumulated over earlier steps) are set aside meanwhile and added back after;
    * FSDP2 encoders skip their reduce-scatter on every micro-batch but the rank's last
      (``set_requires_gradient_sync``), and since that reduce-scatter averages, the grad pass is
      scaled by the world size (:attr:`scale`).

    With ``distributed=False`` each rank's loss is its own, and DDP/FSDP2 keep their usual
    meaning (the average of the ranks' gradients), reduced once, on the rank's last micro-batch.

    FSDP2 all-gathers parameters in every forward, so every rank must run the same number of
    micro-batches: :func:`check_fsdp_counts` raises a clear error on every rank (instead of a
    collective mismatch) when they differ.

    Args:
        towers: the step's encoders (shared ones counted once).
        distributed: the loss is the global batch's (negatives gathered from every rank).
        group: the process group (default: the world).
    """

    ddp: list[nn.parallel.DistributedDataParallel]
    fsdp: list[FSDPModule]
    scale: float  # the grad pass's factor: the world size for FSDP2 with ``distributed``, else 1
    params: list[nn.Parameter]  # the parameters whose gradients finish() sums over ranks

    def __init__(self, towers: Sequence[object], *, distributed: bool, group: ProcessGroup | None = None) -> None:
        unique = list({id(t): t for t in towers}.values())
        self.distributed, self.group = distributed, group
        self.ddp = [t for t in unique if isinstance(t, nn.parallel.DistributedDataParallel)]
        self.fsdp = [t for t in unique if _is_fsdp(t)]
        self.scale = float(dist.get_world_size(group)) if distributed and self.fsdp else 1.0
        if distributed and self.fsdp and len(self.fsdp) != len(unique):
            raise ValueError("distributed=True needs every encoder wrapped alike: all FSDP2 (fully_shard) or none")
        self.params = [] if not distributed or self.fsdp else tower_parameters(unique)
        self._stashed = stash_grads(self.params)

    @contextlib.contextmanager
    def micro_batch(self, *, last: bool) -> Iterator[None]:
        """The context of one micro-batch's forward and backward.

        Args:
            last: the step's final micro-batch (the one that reduces, where this object does not).
        """
        with contextlib.ExitStack() as stack:
            for tower in self.ddp:
                if self.distributed or not last:
                    stack.enter_context(tower.no_sync())
            for sharded in self.fsdp:
                sharded.set_requires_gradient_sync(last)
            yield

    def finish(self) -> None:
        """Sum the step's gradients over ranks where this object does it, and restore earlier ones."""
        for sharded in self.fsdp:
            sharded.set_requires_gradient_sync(True)
        if self.params:
            sum_grads(self.params, group=self.group)
        unstash_grads(self.params, self._stashed)


def check_fsdp_counts(towers: Sequence[object], micro_batches: int, *, group: ProcessGroup | None = None) -> None:
    """With FSDP2 encoders, raise a ValueError on every rank unless all ranks run ``micro_batches``.

    Args:
        towers: the step's encoders (nothing is checked unless one is an FSDP2 module).
        micro_batches: this rank's number of micro-batches.
        group: the process group (default: the world).

    Raises:
        ValueError: when the ranks' counts differ.
    """
    if not any(_is_fsdp(t) for t in towers):
        return
    device = collective_device(group)  # NCCL refuses CPU tensors
    gathered = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, torch.tensor([micro_batches], device=device), group=group)
    counts = torch.cat(gathered).tolist()
    if len(set(counts)) > 1:
        raise ValueError(
            f"FSDP2 (fully_shard) encoders need the same number of micro-batches on every rank, since each "
            f"forward all-gathers the parameters; the ranks have {counts}: give each rank the same number of "
            "samples, or set micro_batch_size so that the counts agree"
        )


def tower_parameters(towers: Sequence[object]) -> list[nn.Parameter]:
    """The trainable parameters of the encoders, each once (shared towers deduplicated)."""
    seen: dict[int, nn.Parameter] = {}
    for tower in towers:
        if isinstance(tower, nn.Module):
            for p in tower.parameters():
                if p.requires_grad:
                    seen.setdefault(id(p), p)
    return list(seen.values())


def stash_grads(params: Iterable[nn.Parameter]) -> list[torch.Tensor | None]:
    """Take the gradients out of ``params`` (to be added back by :func:`unstash_grads`)."""
    stashed = []
    for p in params:
        stashed.append(p.grad)
        p.grad = None
    return stashed


def unstash_grads(params: Sequence[nn.Parameter], stashed: Sequence[torch.Tensor | None]) -> None:
    """Add the gradients taken by :func:`stash_grads` back into ``params``."""
    for p, g in zip(params, stashed, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad.add_(g)


def sum_grads(params: Sequence[nn.Parameter], *, group: ProcessGroup | None = None) -> None:
    """Sum ``.grad`` over ranks, one flat all-reduce per dtype (missing grads count as zeros).

    Args:
        params: the parameters (the same list, in the same order, on every rank).
        group: the process group (default: the world).
    """
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for bucket in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=group)
        start = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[start : start + n].view_as(g))
            start += n


def sum_tensor(value: torch.Tensor, *, group: ProcessGroup | None = None) -> torch.Tensor:
    """``value`` summed over ranks (a new tensor on ``value``'s device; the reduction runs on the backend's device).

    Args:
        value: this rank's tensor.
        group: the process group (default: the world).

    Returns:
        The sum over ranks.
    """
    total = value.detach().to(collective_device(group), copy=True)
    dist.all_reduce(total, group=group)
    return total.to(value.device)
