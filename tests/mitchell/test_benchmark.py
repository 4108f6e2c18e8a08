"""The Mitchell benchmark runs at quick size; the NumPy emulation computes the same products."""

from __future__ import annotations

import numpy as np
import torch

from kexue import mitchell
from kexue.mitchell import benchmark
from kexue.report.bench import Bench


def test_numpy_emulation_agrees_with_kexue_up_to_summation_order() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 30, generator=g), torch.randn(30, 7, generator=g)
    a[0, 0] = 0.0
    emu = benchmark.numpy_emulation(a.numpy(), b.numpy())
    ours = mitchell.matmul(a, b).numpy()
    assert np.abs(emu - ours).max() <= 1e-5 * np.abs(ours).max()


def test_quick_cases_run_and_report_the_three_ratios() -> None:
    bench = Bench("mitchell", quick=True, repeats=1)
    for case in benchmark.BENCH.cases:
        case(bench)
    ratios = {r.id: r for r in bench.ratios}
    assert {
        "mitchell.mul_vs_torch_mul",
        "mitchell.matmul_vs_blas",
        "mitchell.matmul_vs_numpy_emulation",
        "mitchell.bmm_vs_torch_bmm",
    } <= set(ratios)
    assert "mitchell.matmul_vs_blas_2048" not in ratios  # --full only
    assert ratios["mitchell.emulation_agreement"].value < 1e-5
