"""``kexue bench mitchell``: honest speed of emulated Mitchell arithmetic on the CPU.

* A: element-wise product of 16M float32 (``--quick``: 4M): kexue ``mitchell.mul`` (compiled
  kernel) against ``torch.mul``; both allocate their output, both are memory-bound. The torch
  path (integer ops on the bit patterns, any device) is timed beside it.
* B: 512 × 512 @ 512 × 512 float32 (``--quick``: 256), and 2048³ (not at ``--quick``): kexue
  ``mitchell.matmul`` against the exact BLAS ``torch.mm``, and (512 and 256 only) a
  straightforward broadcasting NumPy emulation of the same products (int64 bit arithmetic on a
  (rows, K, N) block, then ``sum``), 16 rows at a time.
* C: batched products at attention shapes (batch × heads = 64, T × d = 128 × 64 for ``Q Kᵀ``):
  ``mitchell.bmm`` against ``torch.bmm``.

Where the time goes (the kernel's comment has the details). Per term of a register tile of the
tiled path: one integer add of ``|a| − ONE`` to ``b``'s bit pattern and one FMA with ``±1.0``
(it applies ``a``'s sign exactly and accumulates in float32 with one rounding), i.e. 2 vector
instructions per 16 terms (AVX-512) against BLAS's 1 FMA: the ideal ratio is about 2 where the
integer add and the FMA share ports, and 1 where they issue in parallel. The packing of the
operands and the per-tile range checks add O(MK + KN). Tiles with a zero, subnormal or
non-finite operand, or whose range could underflow or overflow, and the piecewise correction,
run the generic path (about 12 vector instructions per 16 terms: the old kernel's loop). The
``products_per_ns`` in the descriptions report the rate.

Ratios: ``mitchell.mul_vs_torch_mul`` (kexue throughput / torch.mul throughput, target >= 0.9),
``mitchell.matmul_vs_blas`` (kexue time / BLAS time, 512³, target <= 5),
``mitchell.matmul_vs_blas_2048`` (the same at 2048³, target <= 5), ``mitchell.bmm_vs_torch_bmm``
(kexue time / torch.bmm time, reported), ``mitchell.matmul_vs_numpy_emulation`` (NumPy emulation
time / kexue time, target >= 20). The machine's load (``os.getloadavg``) is in the parameters:
these are wall-clock times on shared cores.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from kexue.mitchell import matrix, ops
from kexue.report.bench import Bench, BenchSuite

BENCH = BenchSuite("mitchell")


def numpy_emulation(a: np.ndarray, b: np.ndarray, rows: int = 16) -> np.ndarray:
    """Mitchell matrix product by plain NumPy broadcasting (normal operands; zeros give 0;
    overflow and underflow clamp), the way one would write it without a kernel."""
    ib = b.view(np.int32).astype(np.int64)[None, :, :]
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
    for start in range(0, a.shape[0], rows):
        ia = a[start : start + rows].view(np.int32).astype(np.int64)[:, :, None]
        mag = (ia & 0x7FFFFFFF) + (ib & 0x7FFFFFFF) - 0x3F800000
        mag = np.clip(mag, 0x00800000, 0x7F800000)
        mag = np.where(((ia & 0x7FFFFFFF) == 0) | ((ib & 0x7FFFFFFF) == 0), 0, mag)
        bits = (mag | ((ia ^ ib) & 0x80000000)).astype(np.uint32)
        out[start : start + rows] = bits.view(np.float32).sum(axis=1)
    return out


def _load() -> float | None:
    """The 1-minute load average (other processes share the cores), where the system reports it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@BENCH.case
def elementwise(bench: Bench) -> None:
    if bench.device != "cpu":
        return
    n = 4_000_000 if bench.quick else 16_000_000
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    case = f"A: element-wise product, {n / 1e6:.0f}M float32"
    params = {"n": n, "threads": torch.get_num_threads(), "load": _load()}
    ours = bench.time(case, "kexue mitchell.mul (kernel)", lambda: ops.mul(a, b), params=params)
    exact = bench.time(case, "torch.mul", lambda: torch.mul(a, b), params=params)
    bench.time(
        case, "kexue mitchell.mul (torch path)", lambda: ops.mul(a, b, backend="torch"), repeats=2, params=params
    )
    bench.ratio(
        "mitchell.mul_vs_torch_mul",
        exact.median_s / ours.median_s,
        target=0.9,
        description="mitchell.mul throughput / torch.mul throughput (16M float32, output allocated by both)",
    )


@BENCH.case
def matmul(bench: Bench) -> None:
    if bench.device != "cpu":
        return
    n = 256 if bench.quick else 512
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    case = f"B: matrix product {n}x{n} @ {n}x{n} float32"
    params = {"n": n, "threads": torch.get_num_threads(), "load": _load()}
    ours = bench.time(case, "kexue mitchell.matmul (kernel)", lambda: matrix.matmul(a, b), params=params)
    blas = bench.time(case, "torch.mm (BLAS, exact)", lambda: torch.mm(a, b), params=params)
    an, bn = a.numpy(), b.numpy()
    emu = bench.time(
        case,
        "NumPy broadcasting emulation",
        lambda: numpy_emulation(an, bn),
        repeats=1 if not bench.quick else 2,
        params=params,
    )
    products = n**3
    bench.ratio(
        "mitchell.matmul_vs_blas",
        ours.median_s / blas.median_s,
        target=5.0,
        higher_is_better=False,
        description=f"mitchell.matmul time / BLAS time ({products / ours.median_s / 1e9:.2f} vs "
        f"{products / blas.median_s / 1e9:.2f} products per ns)",
    )
    bench.ratio(
        "mitchell.matmul_vs_numpy_emulation",
        emu.median_s / ours.median_s,
        target=20.0,
        description="NumPy broadcasting emulation time / mitchell.matmul time",
    )
    diff = float(np.abs(numpy_emulation(an, bn) - matrix.matmul(a, b).numpy()).max() / np.abs(an @ bn).max())
    bench.ratio(
        "mitchell.emulation_agreement",
        diff,
        higher_is_better=False,
        description="max |NumPy emulation − kexue| / max |exact product|: same products, summation order differs",
    )


@BENCH.case
def matmul_2048(bench: Bench) -> None:
    if bench.device != "cpu" or bench.quick:
        return
    n = 2048
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    case = f"B: matrix product {n}x{n} @ {n}x{n} float32"
    params = {"n": n, "threads": torch.get_num_threads(), "load": _load()}
    ours = bench.time(case, "kexue mitchell.matmul (kernel)", lambda: matrix.matmul(a, b), repeats=3, params=params)
    blas = bench.time(case, "torch.mm (BLAS, exact)", lambda: torch.mm(a, b), repeats=3, params=params)
    bench.ratio(
        "mitchell.matmul_vs_blas_2048",
        ours.median_s / blas.median_s,
        target=5.0,
        higher_is_better=False,
        description=f"mitchell.matmul time / BLAS time at 2048³ ({n**3 / ours.median_s / 1e9:.2f} vs "
        f"{n**3 / blas.median_s / 1e9:.2f} products per ns)",
    )


@BENCH.case
def bmm(bench: Bench) -> None:
    if bench.device != "cpu":
        return
    t = 64 if bench.quick else 128
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(64, t, 64, generator=g), torch.randn(64, 64, t, generator=g)
    case = f"C: batched product 64 x ({t}x64 @ 64x{t}) float32 (attention scores)"
    params = {"batch": 64, "t": t, "d": 64, "threads": torch.get_num_threads(), "load": _load()}
    ours = bench.time(case, "kexue mitchell.bmm (kernel)", lambda: matrix.bmm(q, k), params=params)
    exact = bench.time(case, "torch.bmm (exact)", lambda: torch.bmm(q, k), params=params)
    bench.ratio(
        "mitchell.bmm_vs_torch_bmm",
        ours.median_s / exact.median_s,
        higher_is_better=False,
        description=f"mitchell.bmm time / torch.bmm time at attention shapes (64 x {t}x64 @ 64x{t})",
    )
