"""Two (or more) processes give the single-process full-batch gradient: run under ``torchrun``.

``python -m torch.distributed.run --standalone --nproc_per_node 2 -m kexue.contrastive._torchrun_check OUT.json``

Every rank builds the same dropout MLP and the same global batch, keeps an uneven shard of it
(ranks hold different numbers of samples), seeds its RNG with ``seed + 1 + rank`` and runs
:func:`cached_backward` with ``distributed=True``: with the bare encoder, wrapped in
``DistributedDataParallel``, and sharded by FSDP2 (``fully_shard``, gloo on CPU). Rank 0 then
recomputes the gradient in one process: the whole batch in one backward, each shard forwarded
with that rank's RNG stream so the dropout masks match, and writes the relative errors to
``OUT.json``. :func:`launch` runs it from Python.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from kexue._torchrun import exit_without_finalising, launch_module, write_result
from kexue.contrastive.cached import cached_backward
from kexue.contrastive.losses import InfoNCE

Wrap = Literal["plain", "ddp", "fsdp"]  # how the encoder is wrapped


def _encoder(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.Dropout(0.1), nn.GELU(), nn.Linear(32, 16)).double()


def _shards(n: int, world: int) -> list[tuple[int, int]]:
    """Uneven contiguous shards: rank r gets a share growing with r."""
    weights = [r + 1 for r in range(world)]
    bounds, acc = [0], 0
    for w in weights:
        acc += w
        bounds.append(round(n * acc / sum(weights)))
    return list(itertools.pairwise(bounds))


def _wrap(encoder: nn.Sequential, wrap: Wrap) -> nn.Module:
    if wrap == "ddp":
        return nn.parallel.DistributedDataParallel(encoder)
    if wrap == "fsdp":  # FSDP2: each Linear its own unit, then the root
        # in the child only: FSDP2 is public from torch 2.6, and the claims import this module for launch()
        from torch.distributed.fsdp import fully_shard

        for layer in encoder:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(encoder)  # in place: the module's class becomes an FSDPModule subclass
        return encoder
    return encoder


def _even(n: int, world: int) -> list[tuple[int, int]]:
    bounds = [round(n * r / world) for r in range(world + 1)]
    return list(itertools.pairwise(bounds))


def _grads(*modules: nn.Module) -> list[torch.Tensor]:
    """Every parameter's full gradient (FSDP2's sharded DTensors gathered: every rank must call this)."""
    grads = [p.grad for m in modules for p in m.parameters()]
    full = [g.full_tensor() if hasattr(g, "full_tensor") else g for g in grads if g is not None]
    return [g.detach().clone() for g in full]


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    """The check on each rank (the child script's entry point); rank 0 writes the results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--micro", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.randn(args.batch, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed))
    results: dict[str, Any] = {}
    wraps: tuple[Wrap, ...] = ("plain", "ddp", "fsdp")
    for wrap in wraps:
        # FSDP2 all-gathers parameters in every forward: every rank needs as many micro-batches
        shards = _shards(args.batch, world) if wrap != "fsdp" else _even(args.batch, world)
        lo, hi = shards[rank]
        encoder, loss_fn = _encoder(args.seed), InfoNCE(temperature=0.05, learnable=True).double()
        model = _wrap(encoder, wrap)
        torch.manual_seed(args.seed + 1 + rank)
        step = cached_backward(model, [x[lo:hi], x[lo:hi]], loss_fn, micro_batch_size=args.micro, distributed=True)
        got = _grads(encoder, loss_fn)
        if rank == 0:
            reference, ref_loss = _reference(args, x, shards)
            results[f"{wrap}_grad_rel_err"] = _rel(got, reference)
            results[f"{wrap}_loss_abs_err"] = abs(float(step.loss) - ref_loss)
            results["loss"] = ref_loss
        del model, step
    lo, hi = _shards(args.batch, world)[rank]  # uneven: FSDP2 must refuse clearly, on every rank, not hang
    try:
        cached_backward(
            _wrap(_encoder(args.seed), "fsdp"),
            [x[lo:hi], x[lo:hi]],
            InfoNCE(temperature=0.05).double(),
            micro_batch_size=args.micro,
            distributed=True,
        )
        results["fsdp_uneven_error"] = ""
    except ValueError as exc:
        results["fsdp_uneven_error"] = str(exc)
    dist.barrier()  # no rank tears down gloo while another still uses it
    dist.destroy_process_group()
    if rank == 0:
        results.update(
            world=world,
            batch=args.batch,
            shards=[hi - lo for lo, hi in _shards(args.batch, world)],
            fsdp_shards=[hi - lo for lo, hi in _even(args.batch, world)],
        )
        write_result(args.out, results)
    return 0


def _reference(
    args: argparse.Namespace, x: torch.Tensor, shards: list[tuple[int, int]]
) -> tuple[list[torch.Tensor], float]:
    """The global batch in one process and one backward, with each rank's RNG stream."""
    encoder, loss_fn = _encoder(args.seed), InfoNCE(temperature=0.05, learnable=True).double()
    views: list[list[torch.Tensor]] = [[], []]
    for r, (lo, hi) in enumerate(shards):
        torch.manual_seed(args.seed + 1 + r)
        for side in views:
            side.extend(encoder(x[i : min(i + args.micro, hi)]) for i in range(lo, hi, args.micro))
    loss = loss_fn(torch.cat(views[0]), torch.cat(views[1]))
    loss.backward()
    return _grads(encoder, loss_fn), float(loss.detach())


def launch(*, nproc: int = 2, batch: int = 48, micro: int = 5, seed: int = 0, timeout: float = 300) -> dict[str, Any]:
    """Run the check under ``torchrun`` (gloo, localhost) and return rank 0's results.

    Args:
        nproc: processes (ranks).
        batch: the global batch.
        micro: the micro-batch size.
        seed: the data's, the encoder's and (plus 1 + rank) the dropout's seed.
        timeout: seconds before the launch is given up.

    Returns:
        Rank 0's results: relative gradient errors, loss errors, the shards.
    """
    return launch_module(
        "kexue.contrastive._torchrun_check", [f"--batch={batch}", f"--micro={micro}", f"--seed={seed}"], nproc, timeout
    )


if __name__ == "__main__":
    exit_without_finalising(main())
