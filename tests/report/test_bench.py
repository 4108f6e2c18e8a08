from __future__ import annotations

import subprocess
import sys

import pytest

from kexue.report.bench import Bench


def test_time_records_median_of_repeats() -> None:
    calls = []
    bench = Bench("orthogonal", repeats=4)
    result = bench.time("case", "impl", lambda: calls.append(1), params={"n": 3})
    assert len(calls) == 5  # one warm-up + four timed
    assert len(result.times_s) == 4 and min(result.times_s) <= result.median_s <= max(result.times_s)
    assert result.to_json()["params"] == {"n": 3} and bench.cases == [result]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS probe is Linux-only")
def test_peak_memory_sees_a_fresh_allocation() -> None:
    # in a fresh interpreter: memory freed by earlier tests may stay resident in this process
    # (allocator caches), and a new tensor reusing it rightly adds nothing to the peak
    code = """
import torch
from kexue.report.bench import Bench
bench = Bench("orthogonal", repeats=1)
big = bench.time("alloc", "64 MiB", lambda: torch.ones(16 * 2**20))
small = bench.time("alloc", "nothing", lambda: None)
print(big.peak_bytes, small.peak_bytes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    big, small = int(out[0]), int(out[1])
    assert big >= 60 * 2**20
    assert small < 8 * 2**20


def test_ratio_verdicts() -> None:
    bench = Bench("orthogonal")
    assert bench.ratio("x.faster", 6.0, target=5.0).met is True
    assert bench.ratio("x.slower", 4.0, target=5.0).met is False
    assert bench.ratio("x.lower", 1.2, target=1.5, higher_is_better=False).met is True
    reported = bench.ratio("x.reported", 1.7, higher_is_better=False)
    assert reported.met is None and reported.to_json()["target"] is None
