from __future__ import annotations

import pytest

from kexue.report import registry
from kexue.report.bench import BenchSuite
from kexue.report.claims import ClaimSuite


def test_the_eight_names() -> None:
    assert registry.TECHNIQUES == (
        "orthogonal",
        "sinusoidal",
        "rope",
        "contrastive",
        "whitening",
        "growth",
        "mitchell",
        "repetition",
    )


def test_every_entry_loads_the_right_object() -> None:
    for technique in registry.SUITES:
        suite = registry.load(registry.SUITES, technique)
        assert isinstance(suite, ClaimSuite) and suite.technique == technique and suite.checks
    for technique in registry.BENCHMARKS:
        bench = registry.load(registry.BENCHMARKS, technique)
        assert isinstance(bench, BenchSuite) and bench.technique == technique and bench.cases


def test_parse_techniques() -> None:
    assert registry.parse_techniques([], registry.SUITES, "claims") == registry.implemented(registry.SUITES)
    assert registry.parse_techniques(["orthogonal", "orthogonal"], registry.SUITES, "claims") == ["orthogonal"]
    with pytest.raises(ValueError, match="unknown technique 'householder'; choose from: orthogonal, sinusoidal"):
        registry.parse_techniques(["householder"], registry.SUITES, "claims")


def test_known_but_unimplemented_technique_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "SUITES", {"orthogonal": registry.SUITES["orthogonal"]})
    with pytest.raises(ValueError, match="technique 'rope' has no claims yet"):
        registry.parse_techniques(["rope"], registry.SUITES, "claims")
