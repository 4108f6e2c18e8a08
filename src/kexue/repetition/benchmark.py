"""``kexue bench repetition``: exact and estimated R at scale; metrics against plain Python.

* A: exact R for a dense ``n = 5,000`` top-40 transition matrix (``--quick``: 1,500): one LU.
* B: the stochastic estimate (:func:`~kexue.repetition.measure.estimate_r`) at ``n = 5,000``
  against the exact value (relative error), and at ``n = 50,000`` with top-40 decoding (sparse,
  2M non-zeros; ``--quick``: 10,000) timed.
* C: the metrics of :func:`~kexue.repetition.metrics.summary`'s core (rep-2/3/4, distinct-2,
  rep/16, loops) over 10,000 generated sequences of 256 tokens (``--quick``: 1,000) against
  the plain-Python twins, same numbers.

Test matrices: rows with a Zipf-like spread (row ``i`` puts mass ``∝ u^6`` on random targets),
truncated to the top 40 and renormalised, i.e. the top-k decoding of a peaked bigram model.

Ratios: ``repetition.estimate_seconds`` (seconds at n = 50,000, target <= 60),
``repetition.estimate_rel_error`` (at n = 5,000, target <= 0.02),
``repetition.metrics_vs_python`` (plain-Python time / kexue time, target >= 5).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from kexue.report.bench import Bench, BenchSuite, CaseResult

BENCH = BenchSuite("repetition")


def topk_matrix(n: int, k: int = 40, seed: int = 0) -> sp.csr_array:
    """A random top-``k`` row-stochastic matrix (peaked rows), built sparse."""
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n, size=(n, k))
    vals = rng.random((n, k)) ** 6 + 1e-9
    P = sp.csr_array((vals.ravel(), (np.repeat(np.arange(n), k), cols.ravel())), shape=(n, n))
    P.sum_duplicates()
    totals = np.asarray(P.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags_array(1 / totals) @ P)


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@BENCH.case
def exact_and_estimate(bench: Bench) -> None:
    from kexue.repetition.measure import estimate_r, exact_r

    n_exact = 1500 if bench.quick else 5000
    n_big = 10_000 if bench.quick else 50_000
    P = topk_matrix(n_exact)
    dense = P.toarray()
    t_exact, r = _seconds(lambda: exact_r(dense))
    t_est, est = _seconds(lambda: estimate_r(P, probes=64))
    case = "A/B: R of a top-40 bigram decoder"
    bench.cases.append(CaseResult(bench.technique, case, f"exact (dense LU), n = {n_exact:,}", t_exact, [t_exact], None, {"n": n_exact}))
    bench.cases.append(CaseResult(bench.technique, case, f"estimate (64 probes), n = {n_exact:,}", t_est, [t_est], None,
                                  {"n": n_exact, "stderr": est.stderr}))
    big = topk_matrix(n_big, seed=1)
    t_big, est_big = _seconds(lambda: estimate_r(big, probes=64))
    bench.cases.append(CaseResult(bench.technique, case, f"estimate (64 probes), n = {n_big:,}, {big.nnz:,} non-zeros", t_big, [t_big],
                                  None, {"n": n_big, "R": est_big.value, "stderr": est_big.stderr, "terms": est_big.terms}))
    bench.ratio("repetition.estimate_seconds", t_big, target=60.0, higher_is_better=False,
                description=f"seconds for the estimate at n = {n_big:,} (top-40, 64 probes, R = {est_big.value:.4g} ± {est_big.stderr:.2g})")
    bench.ratio("repetition.estimate_rel_error", abs(est.value - r) / r, target=0.02, higher_is_better=False,
                description=f"|estimate − exact| / exact at n = {n_exact:,} (exact R = {r:.6g}, exact in {t_exact:.1f} s)")


@BENCH.case
def metrics(bench: Bench) -> None:
    from kexue.repetition import metrics as fast
    from kexue.repetition import metrics_reference as slow

    count = 1000 if bench.quick else 10_000
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 50, size=(count, 256))
    loopers = rng.random(count) < 0.3  # plant loops in 30 % of them
    for i in np.flatnonzero(loopers):
        k = int(rng.integers(1, 8))
        start = int(rng.integers(50, 200))
        cycle = seqs[i, start : start + k].copy()
        seqs[i, start:] = np.resize(cycle, 256 - start)
    seqs = [list(s) for s in seqs.tolist()]

    def ours():
        padded = fast._padded(seqs)  # lists converted once, then shared by every metric
        return ([float(np.nanmean(fast.rep_n(padded, n))) for n in (2, 3, 4)], fast.distinct_n(padded, 2), fast.rep_l(padded, 16),
                fast.find_loops(padded, 32, 2).looped.tolist())

    def theirs():
        return ([slow.seq_rep_n(seqs, n) for n in (2, 3, 4)], slow.distinct_n(seqs, 2), slow.rep_l(seqs, 16),
                [x[0] for x in slow.find_loops(seqs, 32, 2)])

    case = f"C: metrics over {count:,} sequences of 256 tokens"
    t_ours, a = _seconds(ours)
    t_theirs, b = _seconds(theirs)
    if not (np.allclose(a[0], b[0]) and np.isclose(a[1], b[1]) and np.isclose(a[2], b[2]) and a[3] == b[3]):
        raise AssertionError("vectorised metrics disagree with the plain-Python definitions")
    bench.cases.append(CaseResult(bench.technique, case, "kexue (NumPy)", t_ours, [t_ours], None, {"sequences": count}))
    bench.cases.append(CaseResult(bench.technique, case, "plain Python (same definitions)", t_theirs, [t_theirs], None, {"sequences": count}))
    bench.ratio("repetition.metrics_vs_python", t_theirs / t_ours, target=5.0,
                description="plain-Python time / kexue time, rep-2/3/4, distinct-2, rep/16 and loops (same numbers)")
