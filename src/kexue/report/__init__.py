"""The shared machinery of ``kexue reproduce`` and ``kexue bench``: claim suites, benchmark
suites, the technique registry, the runner and the HTML/JSON writers."""

from kexue.report.bench import Bench, BenchSuite
from kexue.report.claims import Article, Claim, ClaimContext, ClaimSuite

__all__ = ["Article", "Bench", "BenchSuite", "Claim", "ClaimContext", "ClaimSuite"]
