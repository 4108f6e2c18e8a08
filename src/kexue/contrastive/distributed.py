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

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["gather_rows", "sum_grads"]


def gather_rows(x: torch.Tensor, group: Any = None) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` along dim 0 (row counts may differ by rank).

    Returns:
        ``(global rows in rank order, offset of this rank's rows)``.
    """
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    rows = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return rows, sum(counts[:rank])


def tower_parameters(towers: Sequence[Any]) -> list[nn.Parameter]:
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
    for p, g in zip(params, stashed):
        if g is not None:
            p.grad = g if p.grad is None else p.grad.add_(g)


def sum_grads(params: Sequence[nn.Parameter], group: Any = None) -> None:
    """Sum ``.grad`` over ranks, one flat all-reduce per dtype (missing grads count as zeros)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for bucket in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat, group=group)
        start = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[start : start + n].view_as(p.grad))
            start += n


def sum_scalar(value: float, group: Any = None) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend(group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, group=group)
    return float(t.item())
