"""Statistics fitted on several processes and all-reduced equal the single-process fit.

``python -m torch.distributed.run --standalone --nproc_per_node 2 -m kexue.whitening._torchrun_check OUT.json``

Every rank generates the same data, fits an uneven shard of it by streaming, and calls
:meth:`Whitening.all_reduce`; rank 0 compares with one fit on all the data and writes the
differences. :func:`launch` runs it from Python.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch.distributed as dist

from kexue._torchrun import exit_without_finalising, launch_module, write_result
from kexue.whitening.whitening import Whitening


def main(argv: list[str] | None = None) -> int:
    """Run one rank of the check (under ``torchrun``); rank 0 writes the result file.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status, 0.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.rows, args.dim)) @ rng.standard_normal((args.dim, args.dim)) + 5.0
    bounds = np.linspace(0, args.rows, world + 1).astype(int)  # an even split ...
    bounds[1:-1] = (bounds[1:-1] * 0.6).astype(int)  # ... made uneven
    shard = x[bounds[rank] : bounds[rank + 1]]
    w = Whitening(n_components=args.dim // 2)
    for lo in range(0, len(shard), 250):
        w.partial_fit(shard[lo : lo + 250])
    w.all_reduce()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        whole = Whitening(n_components=args.dim // 2).fit(x)
        write_result(
            args.out,
            {
                "n": int(w.n_samples_seen_),
                "world": world,
                "shards": np.diff(bounds).tolist(),
                "mean_err": float(np.abs(w.mean_ - whole.mean_).max()),
                "scatter_rel_err": float(np.abs(w.scatter_ - whole.scatter_).max() / np.abs(whole.scatter_).max()),
                "transform_err": float(np.abs(w.transform(x) - whole.transform(x)).max()),
            },
        )
    return 0


def launch(*, nproc: int = 2, n: int = 3000, dim: int = 24, seed: int = 0, timeout: float = 300) -> dict[str, Any]:
    """Run the check under ``torchrun`` (gloo, localhost) and return rank 0's results.

    Args:
        nproc: the number of processes.
        n: the number of rows (all ranks generate the same data).
        dim: the number of features.
        seed: the data's seed.
        timeout: seconds before the run is abandoned.

    Returns:
        Rank 0's differences from the single-process fit (``mean_err``, ``scatter_rel_err``,
        ``transform_err``), the row count ``n``, the ``world`` size and the ``shards``' sizes.
    """
    return launch_module(
        "kexue.whitening._torchrun_check", [f"--rows={n}", f"--dim={dim}", f"--seed={seed}"], nproc, timeout
    )


if __name__ == "__main__":
    exit_without_finalising(main())
