"""Shared test configuration: ``gpu`` tests are skipped where CUDA is unavailable."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker 'gpu')")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_claims():
    """``run_claims(suite, *checks)``: a quick-scale ClaimContext after running ``checks``
    (all of the suite's when none are named), crashes raised rather than recorded."""
    from kexue.report.claims import ClaimContext

    def run(suite, *checks):
        ctx = ClaimContext(suite.technique, suite.article, mode="quick")
        for check in checks or suite.checks:
            suite.run_check(check, ctx, debug=True)
        return ctx

    return run
