"""``kexue bench repetition``: exact and estimated R at scale; metrics against plain Python.

* A: exact R for a dense ``n = 5,000`` top-40 transition matrix (``--quick``: 1,500): one LU.
* B: the stochastic estimate (:func:`~kexue.repetition.measure.estimate_r`) at ``n = 5,000``
  against the exact value (relative error), and at ``n = 50,000`` with top-40 decoding (sparse,
  2M non-zeros; ``--quick``: 10,000) timed.
* C: the metrics of :func:`~kexue.repetition.metrics.summary`'s core (rep-2/3/4, distinct-2,
  rep/16, loops) over 10,000 generated sequences of 256 tokens (``--quick``: 1,000) against
  the plain-Python twins, same numbers.

* D: :func:`~kexue.repetition.measure.estimate_r` at its default 0.5 % target on the matrix
  families of :func:`~kexue.repetition.families.matrix_families` (and a model-derived ``P``) at
  ``n = 5,000`` (``--quick``: 600) against exact R, every multi-token block estimated stochastically:
  the worst error.
* E: the estimate to 0.5 % at ``n = 50,000`` (``--quick``: 10,000) on three synthetic families.
* F: ``generate`` on the char model's architecture with and without
  :class:`~kexue.repetition.dry.DRYLogitsProcessor`.

Test matrices (A, B): rows with a Zipf-like spread (row ``i`` puts mass ``∝ u^6`` on random targets),
truncated to the top 40 and renormalised, i.e. the top-k decoding of a peaked bigram model.

Ratios: ``repetition.estimate_seconds`` (seconds at n = 50,000, target <= 60),
``repetition.estimate_rel_error`` (at n = 5,000, target <= 0.02),
``repetition.metrics_vs_python`` (plain-Python time / kexue time, target >= 5),
``repetition.estimate_worst_rel_error`` (D, target <= 0.01), ``repetition.estimate_seconds_50k``
(E, target <= 60), ``repetition.dry_overhead`` (F: generate time with DRY / without, target <= 1.15).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from kexue._shared import quieter
from kexue.repetition import metrics as fast
from kexue.repetition import metrics_reference as slow
from kexue.repetition.families import (
    estimator_errors,
    matrix_families,
    model_matrix,
    power_law,
    random_sparse,
    tiny_char_gpt,
    topk_matrix,
)
from kexue.repetition.measure import estimate_r, exact_r
from kexue.report.bench import Bench, BenchSuite, CaseResult

__all__ = [
    "BENCH",
    "estimator_errors",
    "matrix_families",
    "model_matrix",
    "power_law",
    "random_sparse",
    "topk_matrix",
]

T = TypeVar("T")

BENCH = BenchSuite("repetition")


def _seconds(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall-clock seconds of one call of ``fn``, and what it returned."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _add(bench: Bench, case: str, impl: str, times: list[float], params: dict[str, Any]) -> None:
    """One row of ``case``: ``impl``'s median over ``times``."""
    bench.cases.append(
        CaseResult(
            technique=bench.technique,
            case=case,
            impl=impl,
            median_s=float(np.median(times)) if len(times) > 1 else times[0],
            times_s=times,
            peak_bytes=None,
            params=params,
        )
    )


@BENCH.case
def exact_and_estimate(bench: Bench) -> None:
    n_exact = 1500 if bench.quick else 5000
    n_big = 10_000 if bench.quick else 50_000
    P = topk_matrix(n_exact)
    dense = P.toarray()
    t_exact, r = _seconds(lambda: exact_r(dense))
    t_est, est = _seconds(lambda: estimate_r(P, probes=64))
    case = "A/B: R of a top-40 bigram decoder"
    _add(bench, case, f"exact (dense LU), n = {n_exact:,}", [t_exact], {"n": n_exact})
    _add(bench, case, f"estimate (64 probes to start), n = {n_exact:,}", [t_est], {"n": n_exact, "stderr": est.stderr})
    big = topk_matrix(n_big, seed=1)
    t_big, est_big = _seconds(lambda: estimate_r(big, probes=64, rel_error=None))
    params = {"n": n_big, "R": est_big.value, "stderr": est_big.stderr, "terms": est_big.terms}
    _add(bench, case, f"estimate (64 probes), n = {n_big:,}, {big.nnz:,} non-zeros", [t_big], params)
    bench.ratio(
        "repetition.estimate_seconds",
        t_big,
        target=60.0,
        higher_is_better=False,
        description=f"seconds for the estimate at n = {n_big:,} (top-40, 64 probes, "
        f"R = {est_big.value:.4g} ± {est_big.stderr:.2g})",
    )
    bench.ratio(
        "repetition.estimate_rel_error",
        abs(est.value - r) / r,
        target=0.02,
        higher_is_better=False,
        description=f"|estimate − exact| / exact at n = {n_exact:,} (exact R = {r:.6g}, exact in {t_exact:.1f} s)",
    )


@BENCH.case
def estimate_families(bench: Bench) -> None:
    n = 600 if bench.quick else 5000
    families = matrix_families(n, corpora=not bench.quick)  # --quick: the synthetic families
    if not bench.quick:
        families["model-derived (LLaMA, T 0.05, top-40)"] = model_matrix(n)
    rows = estimator_errors(families)  # every multi-token block down the stochastic path
    case = f"D: estimate_r (0.5 % target) against exact R, n = {n:,}"
    for name, v in rows.items():
        seconds = float(v["seconds"])
        params = {k: v[k] for k in ("n", "exact R", "estimate", "stderr", "actual relative error", "probes")}
        _add(bench, case, name, [seconds], params)
    errors = {name: float(v["actual relative error"]) for name, v in rows.items()}
    worst = max(errors, key=lambda k: errors[k])
    bench.ratio(
        "repetition.estimate_worst_rel_error",
        errors[worst],
        target=0.01,
        higher_is_better=False,
        description=f"worst |estimate − exact| / exact over {len(rows)} matrix families at n = {n:,} ({worst})",
    )


@BENCH.case
def estimate_50k(bench: Bench) -> None:
    n = 10_000 if bench.quick else 50_000
    case = f"E: estimate_r to 0.5 % standard error, n = {n:,}"
    times = {}
    for name, P in (
        ("random sparse, 8 a row", random_sparse(n)),
        ("power-law rows", power_law(n)),
        ("peaked top-40", topk_matrix(n, seed=1)),
    ):
        t, est = _seconds(functools.partial(estimate_r, P))
        times[name] = t
        params = {
            "n": n,
            "nnz": P.nnz,
            "R": est.value,
            "stderr": est.stderr,
            "probes": est.probes,
            "converged": est.converged,
        }
        _add(bench, case, name, [t], params)
    slowest = max(times, key=lambda k: times[k])
    bench.ratio(
        "repetition.estimate_seconds_50k",
        times[slowest],
        target=60.0,
        higher_is_better=False,
        description=f"seconds to a 0.5 % standard error at n = {n:,}, slowest of three families ({slowest})",
    )


def _generate_timer(batch: int, new: int) -> Callable[[bool], None]:
    """``generate`` on the char model's architecture (random weights), with or without DRY."""
    from transformers import LogitsProcessorList  # optional extra: nlp

    from kexue.repetition.dry import DRYLogitsProcessor  # optional extra: nlp

    model = tiny_char_gpt(65, seed=0).eval()
    prompt = torch.randint(0, 65, (batch, 16), generator=torch.Generator().manual_seed(0))

    def generate(dry: bool) -> None:
        processors = [DRYLogitsProcessor(0.8, breaker_ids=[[0], [10]])] if dry else []
        kw = {"logits_processor": LogitsProcessorList(processors)} if dry else {}
        torch.manual_seed(0)
        with torch.no_grad(), quieter("transformers.generation.utils"):
            model.generate(prompt, max_new_tokens=new, do_sample=True, top_k=0, pad_token_id=0, **kw)

    return generate


@BENCH.case
def dry_overhead(bench: Bench) -> None:
    batch, new = (4, 32) if bench.quick else (32, 256)
    generate = _generate_timer(batch, new)
    case = (
        f"F: generate on the char model (LLaMA d 64, 2 layers, vocabulary 65), {batch} x {new} tokens, "
        "sampling, one thread"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from intra-op threads; one thread keeps both steady
    try:
        generate(False)  # warm-up
        generate(True)
        plain: list[float] = []
        dry: list[float] = []
        for _ in range(max(3, bench.repeats)):  # interleaved, so drift in the machine's load hits both
            plain.append(_seconds(lambda: generate(False))[0])
            dry.append(_seconds(lambda: generate(True))[0])
    finally:
        torch.set_num_threads(threads)
    for name, times in (("without DRY", plain), ("with DRY (kexue)", dry)):
        _add(bench, case, name, times, {"batch": batch, "tokens": new})
    bench.ratio(
        "repetition.dry_overhead",
        float(np.median(dry) / np.median(plain)),
        target=1.15,
        higher_is_better=False,
        description=f"generate time with DRY / without, median of {len(plain)} interleaved runs "
        f"({batch} x {new} tokens)",
    )


def _looping_sequences(count: int) -> list[list[int]]:
    """``count`` random sequences of 256 ids below 50, loops planted in 30 % of them."""
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 50, size=(count, 256))
    loopers = rng.random(count) < 0.3  # plant loops in 30 % of them
    for i in np.flatnonzero(loopers):
        k = int(rng.integers(1, 8))
        start = int(rng.integers(50, 200))
        cycle = seqs[i, start : start + k].copy()
        seqs[i, start:] = np.resize(cycle, 256 - start)
    return [list(s) for s in seqs.tolist()]


Metrics = tuple[list[float], float, float, list[bool]]


@BENCH.case
def metrics(bench: Bench) -> None:
    count = 1000 if bench.quick else 10_000
    seqs = _looping_sequences(count)

    def ours() -> Metrics:
        padded = fast._padded(seqs)  # lists converted once, then shared by every metric
        return (
            [float(np.nanmean(fast.rep_n(padded, n=n))) for n in (2, 3, 4)],
            fast.distinct_n(padded, n=2),
            fast.rep_l(padded, l=16),
            fast.find_loops(padded, max_period=32, min_repeats=2).looped.tolist(),
        )

    def theirs() -> Metrics:
        return (
            [slow.seq_rep_n(seqs, n=n) for n in (2, 3, 4)],
            slow.distinct_n(seqs, n=2),
            slow.rep_l(seqs, l=16),
            [x[0] for x in slow.find_loops(seqs, max_period=32, min_repeats=2)],
        )

    case = f"C: metrics over {count:,} sequences of 256 tokens"
    t_ours, a = _seconds(ours)
    t_theirs, b = _seconds(theirs)
    if not (np.allclose(a[0], b[0]) and np.isclose(a[1], b[1]) and np.isclose(a[2], b[2]) and a[3] == b[3]):
        raise AssertionError("vectorised metrics disagree with the plain-Python definitions")
    _add(bench, case, "kexue (NumPy)", [t_ours], {"sequences": count})
    _add(bench, case, "plain Python (same definitions)", [t_theirs], {"sequences": count})
    bench.ratio(
        "repetition.metrics_vs_python",
        t_theirs / t_ours,
        target=5.0,
        description="plain-Python time / kexue time, rep-2/3/4, distinct-2, rep/16 and loops (same numbers)",
    )
