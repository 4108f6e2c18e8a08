"""The sentence-transformers loss across processes: run under ``torchrun`` (see :func:`launch`).

``python -m torch.distributed.run --standalone --nproc_per_node 2 -m kexue.contrastive._torchrun_st_check \
OUT.json MODEL_DIR``

Every rank loads the same sentence-transformers model (dropout on), keeps its own shard of one
global batch of (anchor, positive) texts (ranks hold different numbers of pairs), seeds its RNG
with ``seed + 1 + rank`` and backpropagates :class:`CachedContrastiveLoss` with
``distributed=True``: once with the bare model, once wrapped in ``DistributedDataParallel`` as
the trainer wraps it (``find_unused_parameters``: BERT's pooler is unused). Rank 0 recomputes
the gradient of the global batch in one process and one graph (each shard's micro-batches
forwarded with that rank's RNG stream, so the dropout masks match) and writes the relative
errors, and how many gradient reductions each step made, to ``OUT.json``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kexue._torchrun import exit_without_finalising, launch_module, write_result
from kexue.contrastive.cached import encode
from kexue.contrastive.st_loss import CachedContrastiveLoss, plan_micro_batches, take

WORDS = "a the cat dog sat ran on under mat tree bright cold rain sun home town far near".split()


def _texts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(
            WORDS[int(i)]
            for i in torch.randint(0, len(WORDS), (int(torch.randint(2, 14, (1,), generator=g)),), generator=g)
        )
        for _ in range(n)
    ]


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def main(argv: list[str] | None = None) -> int:
    """The check on each rank (the child script's entry point); rank 0 writes the results."""
    from sentence_transformers import SentenceTransformer  # optional extra: nlp (this child script's model)

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=18)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    anchors, positives = _texts(args.batch, args.seed), _texts(args.batch, args.seed + 100)
    bounds = [0] + [round(args.batch * sum(range(1, r + 2)) / sum(range(1, world + 1))) for r in range(world)]
    lo, hi = bounds[rank], bounds[rank + 1]
    results: dict[str, Any] = {"shards": [b - a for a, b in itertools.pairwise(bounds)]}
    for wrap in ("plain", "ddp"):
        model = SentenceTransformer(args.model, device="cpu").train()
        loss = CachedContrastiveLoss(model, micro_batch_size=args.micro, distributed=True)
        if wrap == "ddp":
            loss.model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        reductions: list[int] = []
        model.zero_grad(set_to_none=True)
        torch.manual_seed(args.seed + 1 + rank)
        original = dist.all_reduce
        dist.all_reduce = _counting(original, reductions)
        try:
            value = loss([model.preprocess(anchors[lo:hi]), model.preprocess(positives[lo:hi])])
            value.backward()
        finally:
            dist.all_reduce = original
        got = _flat_grad(model)
        if rank == 0:
            reference, ref_loss = _reference(args, anchors, positives, bounds, world)
            results[f"{wrap}_grad_rel_err"] = float((got - reference).norm() / reference.norm())
            results[f"{wrap}_loss_abs_err"] = abs(float(value) - ref_loss)
            results[f"{wrap}_all_reduces"] = len(reductions)
        del loss, model
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        write_result(args.out, results)
    return 0


def _counting(original: Callable[..., Any], calls: list[int]) -> Callable[..., Any]:
    """``original`` (``dist.all_reduce``), noting each call in ``calls``."""

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    return counting


def _reference(
    args: argparse.Namespace, anchors: list[str], positives: list[str], bounds: list[int], world: int
) -> tuple[torch.Tensor, float]:
    """The global batch in one graph: each rank's micro-batches in that rank's order and RNG stream."""
    from sentence_transformers import SentenceTransformer  # optional extra: nlp (this child script's model)

    model = SentenceTransformer(args.model, device="cpu").train()
    helper = CachedContrastiveLoss(model, micro_batch_size=args.micro)
    columns: list[list[torch.Tensor]] = [[], []]
    for r in range(world):
        lo, hi = bounds[r], bounds[r + 1]
        features = [model.preprocess(anchors[lo:hi]), model.preprocess(positives[lo:hi])]
        helper._plans = [plan_micro_batches(f, micro_batch_size=args.micro) for f in features]
        torch.manual_seed(args.seed + 1 + r)
        for column, (feature, plan) in enumerate(zip(features, helper._plans, strict=True)):
            parts = [
                encode(model, take(feature, index, width))
                for index, width in zip(plan.groups, plan.widths, strict=True)
            ]
            columns[column].append(torch.cat(parts)[plan.inverse])
    loss = helper.info_nce(torch.cat(columns[0]), torch.cat(columns[1]))
    loss.backward()
    return _flat_grad(model), float(loss.detach())


def launch(
    model: str, *, nproc: int = 2, batch: int = 18, micro: int = 4, seed: int = 0, timeout: float = 300
) -> dict[str, Any]:
    """Run the check under ``torchrun`` (gloo, localhost) and return rank 0's results.

    Args:
        model: the folder of the sentence-transformers model every rank loads.
        nproc: processes (ranks).
        batch: the global batch of pairs.
        micro: the micro-batch size.
        seed: the texts' and (plus 1 + rank) the dropout's seed.
        timeout: seconds before the launch is given up.

    Returns:
        Rank 0's results: relative gradient errors, loss errors, all-reduce counts, the shards.
    """
    return launch_module(
        "kexue.contrastive._torchrun_st_check",
        [model, f"--batch={batch}", f"--micro={micro}", f"--seed={seed}"],
        nproc,
        timeout,
    )


if __name__ == "__main__":
    exit_without_finalising(main())
