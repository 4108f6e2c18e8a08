"""Run the claim suites or benchmark suites of several techniques, with a progress bar per technique."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kexue.report import registry
from kexue.report.bench import Bench, BenchSuite
from kexue.report.claims import STATUSES, Article, Claim, ClaimContext, ClaimSuite, Figure, Mode

__all__ = ["ReproduceResult", "run_benchmarks", "run_claims"]


@dataclass
class ReproduceResult:
    """Everything ``kexue reproduce`` reports."""

    mode: Mode
    claims: list[Claim] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    articles: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[Claim]:
        return [c for c in self.claims if c.status == "fail"]

    @property
    def skipped(self) -> list[Claim]:
        return [c for c in self.claims if c.status == "skipped"]

    def to_json(self) -> dict[str, Any]:
        from kexue import __version__

        ran = list(self.seconds)
        return {
            "kexue_version": __version__,
            "mode": self.mode,
            "claims": [c.to_json() for c in self.claims],
            "techniques": {
                t: {**self.articles[t], "seconds": round(self.seconds[t], 3), "figures": [f.name for f in self.figures if f.technique == t]}
                for t in ran
            },
            "not_implemented": [t for t in registry.TECHNIQUES if t not in registry.SUITES],
            "summary": {s: sum(c.status == s for c in self.claims) for s in STATUSES},
        }


def run_claims(
    techniques: list[str],
    mode: Mode = "quick",
    *,
    console: Console | None = None,
    seed: int = 0,
    debug: bool = False,
) -> ReproduceResult:
    """Run every check of ``techniques`` (registered names) at ``mode`` scale."""
    console = console or Console(stderr=True)
    result = ReproduceResult(mode=mode)
    with _progress(console, "checks") as progress:
        suites = [_load_suite(t) for t in techniques]
        tasks = [progress.add_task(s.technique, total=len(s.checks), current="") for s in suites]
        for suite, task in zip(suites, tasks):
            ctx = ClaimContext(suite.technique, suite.article, mode=mode, seed=seed)
            start = time.perf_counter()
            for check in suite.checks:
                progress.update(task, current=check.__name__)
                suite.run_check(check, ctx, debug=debug)
                progress.advance(task)
            progress.update(task, current="")
            result.seconds[suite.technique] = time.perf_counter() - start
            result.claims.extend(ctx.claims)
            result.figures.extend(ctx.figures)
            result.articles[suite.technique] = {"title": suite.article.title, "url": suite.article.url}
    return result


def _load_suite(technique: str) -> ClaimSuite:
    """The technique's suite; when importing it needs a missing extra, a one-check suite that says so."""
    from kexue._optional import MissingExtra

    try:
        return registry.load(registry.SUITES, technique)
    except MissingExtra as exc:
        reason = str(exc)
    suite = ClaimSuite(technique, Article(f"{technique} (not importable here)", ""))

    def claims(ctx: ClaimContext) -> None:
        ctx.skip("claims.skipped", f"the {technique} claims could not run here", reason)

    suite.check(claims)
    return suite


def run_benchmarks(
    techniques: list[str],
    *,
    quick: bool = False,
    device: str = "cpu",
    repeats: int = 5,
    console: Console | None = None,
) -> list[Bench]:
    """Run every benchmark case of ``techniques`` (registered names); one :class:`Bench` each."""
    console = console or Console(stderr=True)
    benches: list[Bench] = []
    with _progress(console, "cases") as progress:
        suites = [_load_bench(t) for t in techniques]
        tasks = [progress.add_task(s.technique, total=len(s.cases), current="") for s in suites]
        for suite, task in zip(suites, tasks):
            bench = Bench(suite.technique, quick=quick, device=device, repeats=repeats)
            for case in suite.cases:
                progress.update(task, current=case.__name__)
                suite.run_case(case, bench)
                progress.advance(task)
            progress.update(task, current="")
            benches.append(bench)
    return benches


def _load_bench(technique: str) -> BenchSuite:
    """The technique's benchmarks; when importing them needs a missing extra, one case that raises it."""
    from kexue._optional import MissingExtra

    try:
        return registry.load(registry.BENCHMARKS, technique)
    except MissingExtra as exc:
        error = exc
    suite = BenchSuite(technique)

    def benchmarks(bench: Bench) -> None:
        raise error

    suite.case(benchmarks)
    return suite


def _progress(console: Console, unit: str) -> Progress:
    """One bar per technique: name, bar, done/total ``unit``, elapsed time, current step."""
    return Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
        console=console,
    )
