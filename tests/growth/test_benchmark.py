"""The growth benchmark runs end to end at quick size and its ratios are sane."""

from __future__ import annotations

from kexue.growth import benchmark
from kexue.report.bench import Bench


def test_quick_grow_checkpoint_case() -> None:
    bench = Bench("growth", quick=True, repeats=1)
    benchmark.grow_checkpoint(bench)
    ratios = {r.id: r for r in bench.ratios}
    assert set(ratios) == {"growth.time_vs_load_save", "growth.memory_vs_models", "growth.memory_with_save_vs_models"}
    assert ratios["growth.time_vs_load_save"].value >= 1.0  # grow time is never negative
    assert 0.5 < ratios["growth.memory_vs_models"].value < 3  # the grown weights are really held (~1.0-1.2)
    assert [c.impl for c in bench.cases] == ["from_pretrained (small)", "kexue widen(k=2)", "save_pretrained (large)"]
