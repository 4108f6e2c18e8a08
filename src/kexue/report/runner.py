"""Run the claim suites of several techniques with a progress bar, collecting one result set."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kexue.report import registry
from kexue.report.claims import Claim, ClaimContext, ClaimSuite, Figure, Mode

__all__ = ["ReproduceResult", "run_claims"]


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
            "summary": {s: sum(c.status == s for c in self.claims) for s in ("pass", "fail", "documented")},
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
    columns = (
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("checks"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
    )
    with Progress(*columns, console=console) as progress:
        suites: list[ClaimSuite] = [registry.load(registry.SUITES, t) for t in techniques]
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
