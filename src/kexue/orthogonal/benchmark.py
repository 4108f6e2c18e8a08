"""``kexue bench orthogonal``: applying T in O(d) vs forming T and a matmul, and the memory floors.

Cases (float32, ``n x 768``; n = 1,000,000 at full size, 100,000 with ``--quick``):

* ``kexue apply`` for each kind: :func:`apply_orthogonal_map`, allocating its result;
* ``kexue apply out=``: the same into a preallocated buffer;
* ``dense T + matmul``: the peer a user would write, ``x @ orthogonal_map(a, b).T``;
* ``x.clone()``: one read and one write of ``x`` including a fresh allocation;
* ``buf.copy_(x)``: one read and one write into a preallocated buffer;
* ``huge-page empty + copy_``: ``x.clone()`` with the huge-page hint kexue gives its own
  outputs (:func:`kexue._shared.empty_like_fast`), the fair floor for the allocating apply.

Ratios (the default kind, reflection): ``orthogonal.apply_vs_matmul`` = matmul time / kexue
time (target ≥ 5); ``orthogonal.apply_vs_clone`` = kexue time / clone time and
``orthogonal.apply_vs_copy`` = kexue ``out=`` time / ``copy_`` time (reported; the apply
reads ``x`` twice and writes once, so about 1.5 is the two-pass floor), and
``orthogonal.apply_vs_hugepage_clone`` (reported; kexue's apply vs the clone floor with the
same allocation, since plain ``clone`` pays 4 KiB first-touch page faults that kexue avoids).
"""

from __future__ import annotations

import functools

import torch

from kexue._shared import empty_like_fast
from kexue.orthogonal.maps import KINDS, apply_orthogonal_map, orthogonal_map
from kexue.report.bench import Bench, BenchSuite

BENCH = BenchSuite("orthogonal")


@BENCH.case
def apply_vs_dense(bench: Bench) -> None:
    n, d = (100_000 if bench.quick else 1_000_000), 768
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator).to(bench.device)
    a = torch.randn(d, generator=generator).to(bench.device)
    b = torch.randn(d, generator=generator).to(bench.device)
    buf = torch.empty_like(x).fill_(0.0)  # touched now, so out=/copy_ measure no first-touch faults
    case = f"apply {n:,} x {d} float32"
    params = {"n": n, "d": d, "dtype": "float32"}

    ours = {}
    for kind in KINDS:
        ours[kind] = bench.time(
            case, f"kexue apply ({kind})", functools.partial(apply_orthogonal_map, x, a, b, kind=kind), params=params
        )
    ours_out = bench.time(
        case, "kexue apply out= (reflection)", lambda: apply_orthogonal_map(x, a, b, out=buf), params=params
    )
    dense = bench.time(
        case, "dense T + matmul (reflection)", lambda: x @ orthogonal_map(a, b).T, repeats=3, params=params
    )
    clone = bench.time(case, "floor: x.clone()", lambda: x.clone(), params=params)
    copy = bench.time(case, "floor: buf.copy_(x)", lambda: buf.copy_(x), params=params)
    huge = bench.time(case, "floor: huge-page empty + copy_", lambda: empty_like_fast(x).copy_(x), params=params)

    bench.ratio(
        "orthogonal.apply_vs_matmul",
        dense.median_s / ours["reflection"].median_s,
        target=5.0,
        description="dense T + matmul time / kexue apply time (reflection)",
    )
    bench.ratio(
        "orthogonal.apply_vs_clone",
        ours["reflection"].median_s / clone.median_s,
        higher_is_better=False,
        description="kexue apply time / x.clone() time (one read + one write + allocation)",
    )
    bench.ratio(
        "orthogonal.apply_vs_hugepage_clone",
        ours["reflection"].median_s / huge.median_s,
        higher_is_better=False,
        description="kexue apply time / (huge-page allocation + copy_) time: the clone floor with kexue's allocation",
    )
    bench.ratio(
        "orthogonal.apply_vs_copy",
        ours_out.median_s / copy.median_s,
        higher_is_better=False,
        description="kexue apply out= time / buf.copy_(x) time (one read + one write)",
    )
