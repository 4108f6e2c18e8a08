"""``kexue bench whitening``: fitting against scikit-learn, streaming memory and throughput, search.

Cases (CPU; ``--quick`` divides the sizes by 10, except B: 100,000 and 400,000 rows):

* A: fit on 200,000 x 384 float32 in memory: kexue ``Whitening(ddof=1)`` against
  scikit-learn's ``PCA(whiten=True, svd_solver="full")``; the two transforms are compared
  up to the sign of each component.
* B: streaming fit on 768-d vectors in batches of 10,000, N = 100,000 and N = 1,000,000, each
  in a fresh process (peak RSS growth during the fit): kexue ``partial_fit`` against the float64
  ``XᵀX`` floor (convert the batch to float64, one GEMM) on the same batches. The batches
  cycle through a fixed pool of 5 generated ones, so generation is not timed.
* C: top-10 cosine search, 1,000 queries over 100,000 vectors: raw 384-d against whitened
  k = 128 (vectors with the decaying spectrum of the retrieval claim).

Ratios: ``whitening.fit_vs_sklearn`` (sklearn time / kexue time, target >= 1.0),
``whitening.transform_vs_sklearn`` (max |Δ| relative to max |z|, up to sign, sklearn fitted on
a float64 copy so that float32 SVD rounding, ~2e-4, is not counted; target <= 1e-6),
``whitening.stream_rss_growth`` (peak RSS at 1M / at 100k, target <= 1.2),
``whitening.stream_vs_gemm_floor`` (kexue time / XᵀX time at 1M, target <= 2.0),
``whitening.search_speedup`` (raw search time / whitened search time, reported).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.decomposition import PCA

from kexue.report.bench import Bench, BenchSuite, CaseResult, PeakMemory, run_in_fresh_process
from kexue.whitening.whitening import Whitening

BENCH = BenchSuite("whitening")
STREAM_DIM, STREAM_BATCH, POOL = 768, 10_000, 5


@BENCH.case
def fit_in_memory(bench: Bench) -> None:
    """Case A: fitting in memory against scikit-learn's whitened PCA, and the two maps compared."""
    n, d = (20_000, 384) if bench.quick else (200_000, 384)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) * np.logspace(0, -2, d)) + 0.5).astype(np.float32)
    case = f"A: fit {n} x {d} float32 in memory"
    params = {"n": n, "d": d, "threads": torch.get_num_threads()}
    ours = bench.time(case, "kexue Whitening(ddof=1).fit", lambda: Whitening(ddof=1).fit(x), params=params)
    theirs = bench.time(
        case,
        "sklearn PCA(whiten=True, svd_solver='full').fit",
        lambda: PCA(whiten=True, svd_solver="full").fit(x),
        params=params,
    )
    bench.ratio(
        "whitening.fit_vs_sklearn",
        theirs.median_s / ours.median_s,
        target=1.0,
        description="scikit-learn PCA(whiten=True, full SVD) fit time / kexue Whitening fit time",
    )
    x64 = x.astype(np.float64)  # compare the maps, not float32 rounding: sklearn's SVD runs in X's dtype
    z_ours = Whitening(ddof=1).fit(x).transform(x64)
    z_theirs = PCA(whiten=True, svd_solver="full").fit(x64).transform(x64)
    top = 64  # trailing components of nearly equal variance may mix; compare the well-separated ones
    signs = np.sign((z_ours[:, :top] * z_theirs[:, :top]).sum(0))
    err = float(np.abs(z_ours[:, :top] * signs - z_theirs[:, :top]).max() / np.abs(z_theirs[:, :top]).max())
    bench.ratio(
        "whitening.transform_vs_sklearn",
        err,
        target=1e-6,
        higher_is_better=False,
        description=f"max |z_kexue − z_sklearn| / max |z| over the first {top} components, up to sign "
        "(sklearn fitted on the float64 copy)",
    )


def _stream_child(impl: str, n: int) -> dict[str, float]:
    """In a fresh process: time and peak RSS growth of a streaming pass over ``n`` rows."""
    rng = np.random.default_rng(0)
    mixing = (rng.standard_normal((STREAM_DIM, STREAM_DIM)) * np.logspace(0, -2, STREAM_DIM)).astype(np.float32)
    pool = [(rng.standard_normal((STREAM_BATCH, STREAM_DIM), dtype=np.float32) @ mixing) for _ in range(POOL)]
    memory = PeakMemory("cpu")
    base = memory.start()
    start = time.perf_counter()
    if impl == "kexue":
        w = Whitening()
        for i in range(n // STREAM_BATCH):
            w.partial_fit(pool[i % POOL])
        _ = w.kernel_  # the eigendecomposition is part of the fit
    else:
        gram = torch.zeros(STREAM_DIM, STREAM_DIM, dtype=torch.float64)
        for i in range(n // STREAM_BATCH):
            b = torch.from_numpy(pool[i % POOL]).double()
            gram += b.T @ b
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": memory.stop(base)}


def _in_fresh_process(impl: str, n: int, runs: int = 3) -> dict[str, float]:
    """The median time and median peak of ``runs`` fresh processes: one process's peak RSS varies by
    ±15 % from run to run (allocator timing), too much for a 1.2 target on a single sample."""
    samples = [run_in_fresh_process(__name__, "_stream_child", impl, n, timeout=1800) for _ in range(runs)]
    return {key: float(np.median([r[key] for r in samples])) for key in ("seconds", "peak")}


@BENCH.case
def streaming(bench: Bench) -> None:
    """Case B: streaming memory and time against the float64 ``XᵀX`` floor, each run in a fresh process."""
    if bench.device != "cpu":
        return
    # the smaller run needs several batches to reach its steady state: one batch of 10,000 peaks
    # ~70 MiB lower (no merge yet), and 50,000 rows still peaked ~15 % below 200,000 (ratios up to
    # 1.29 against the 1.2 target), so --quick compares 100,000 with 400,000 (medians of 3: 1.03-1.14)
    small, large = (100_000, 400_000) if bench.quick else (100_000, 1_000_000)
    case = f"B: streaming fit, {STREAM_DIM}-d, batches of {STREAM_BATCH}, fresh process (median of 3)"
    runs = {}
    for impl, n in (("kexue", small), ("kexue", large), ("floor", large)):
        runs[(impl, n)] = r = _in_fresh_process(impl, n)
        label = "kexue partial_fit" if impl == "kexue" else "floor: float64 XᵀX (convert + GEMM)"
        bench.cases.append(
            CaseResult(
                technique=bench.technique,
                case=case,
                impl=f"{label}, N = {n:,}",
                median_s=r["seconds"],
                times_s=[r["seconds"]],
                peak_bytes=int(r["peak"]),
                params={"n": n, "dim": STREAM_DIM, "batch": STREAM_BATCH},
            )
        )
    bench.ratio(
        "whitening.stream_rss_growth",
        runs[("kexue", large)]["peak"] / max(runs[("kexue", small)]["peak"], 1),
        target=1.2,
        higher_is_better=False,
        description=f"peak RSS growth of the streaming fit at N = {large:,} / at N = {small:,}",
    )
    bench.ratio(
        "whitening.stream_vs_gemm_floor",
        runs[("kexue", large)]["seconds"] / runs[("floor", large)]["seconds"],
        target=2.0,
        higher_is_better=False,
        description=f"kexue streaming fit time / float64 XᵀX time on the same {large:,} rows",
    )


@BENCH.case
def search(bench: Bench) -> None:
    """Case C: top-10 cosine search over raw and whitened vectors."""
    n, queries = (10_000, 100) if bench.quick else (100_000, 1000)
    d, k = 384, 128
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mixing = (basis * np.sqrt(np.logspace(0, -2.5, d))) @ basis.T
    db = (rng.standard_normal((n, d)) @ mixing + 0.3).astype(np.float32)
    q = (rng.standard_normal((queries, d)) @ mixing + 0.3).astype(np.float32)
    w = Whitening(n_components=k).fit(db)

    def unit(v: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        return t / t.norm(dim=1, keepdim=True)

    raw_db, raw_q, wh_db, wh_q = unit(db), unit(q), unit(w.transform(db)), unit(w.transform(q))
    case = f"C: top-10 search, {queries} queries over {n:,} vectors"
    raw = bench.time(case, f"raw {d}-d", lambda: (raw_q @ raw_db.T).topk(10, dim=1), params={"n": n, "d": d})
    wh = bench.time(case, f"whitened k = {k}", lambda: (wh_q @ wh_db.T).topk(10, dim=1), params={"n": n, "d": k})
    bench.ratio(
        "whitening.search_speedup",
        raw.median_s / wh.median_s,
        description=f"raw {d}-d search time / whitened {k}-d search time",
    )
