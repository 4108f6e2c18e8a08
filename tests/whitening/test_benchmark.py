"""The whitening benchmark's cases run and its comparisons are sound (quick sizes)."""

from __future__ import annotations

import pytest

from kexue.report.bench import Bench
from kexue.whitening import benchmark


def test_fit_case_agrees_with_sklearn_and_search_case_runs() -> None:
    bench = Bench("whitening", quick=True, repeats=1)
    benchmark.fit_in_memory(bench)
    benchmark.search(bench)
    ratios = {r.id: r for r in bench.ratios}
    assert ratios["whitening.transform_vs_sklearn"].met
    assert ratios["whitening.fit_vs_sklearn"].value > 0 and ratios["whitening.search_speedup"].value > 0


def test_streaming_child_reports_time_and_memory() -> None:
    small = benchmark._stream_child("kexue", 20_000)
    floor = benchmark._stream_child("floor", 20_000)
    assert small["seconds"] > 0 and floor["seconds"] > 0 and small["peak"] >= 0


@pytest.mark.slow
def test_quick_benchmark_targets() -> None:
    bench = Bench("whitening", quick=True, repeats=2)
    for case in benchmark.BENCH.cases:
        case(bench)
    ratios = {r.id: r for r in bench.ratios}
    assert ratios["whitening.stream_rss_growth"].met and ratios["whitening.transform_vs_sklearn"].met
