"""Run the claim suites or benchmark suites of several techniques, with a progress bar per technique."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kexue import __version__
from kexue._native import cache_dir
from kexue._optional import as_missing_extra
from kexue.report import registry
from kexue.report.bench import Bench, BenchSuite
from kexue.report.claims import STATUSES, Article, Claim, ClaimContext, ClaimSuite, Figure, Headline, Mode
from kexue.report.io import write_json

__all__ = ["Estimate", "ReproduceResult", "run_benchmarks", "run_claims"]


@dataclass
class ReproduceResult:
    """Everything ``kexue reproduce`` reports.

    Args:
        mode: the scale the checks ran at.
        claims: every claim, in run order.
        figures: every figure.
        articles: technique → its article's title, address and dashboard headlines.
        seconds: technique → the seconds its checks took.
    """

    mode: Mode
    claims: list[Claim] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    articles: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[Claim]:
        """The claims that failed."""
        return [c for c in self.claims if c.status == "fail"]

    @property
    def skipped(self) -> list[Claim]:
        """The claims that could not run here."""
        return [c for c in self.claims if c.status == "skipped"]

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` payload.

        Returns:
            A JSON-able mapping: version, mode, claims, techniques, what is not implemented, summary.
        """
        ran = list(self.seconds)
        return {
            "kexue_version": __version__,
            "mode": self.mode,
            "claims": [c.to_json() for c in self.claims],
            "techniques": {
                t: {
                    **self.articles[t],
                    "seconds": round(self.seconds[t], 3),
                    "figures": [f.name for f in self.figures if f.technique == t],
                }
                for t in ran
            },
            "not_implemented": [t for t in registry.TECHNIQUES if t not in registry.SUITES],
            "summary": {s: sum(c.status == s for c in self.claims) for s in STATUSES},
        }


def run_claims(
    techniques: list[str],
    *,
    mode: Mode = "quick",
    console: Console | None = None,
    seed: int = 0,
    debug: bool = False,
) -> ReproduceResult:
    """Run every check of ``techniques`` (registered names) at ``mode`` scale.

    Args:
        techniques: registered technique names (see :func:`kexue.report.registry.parse_techniques`).
        mode: the scale.
        console: where the progress bars go (default: stderr).
        seed: the seed of the random inputs.
        debug: re-raise a check's crash instead of recording it as a failed claim.

    Returns:
        The claims, figures, articles and times.
    """
    console = console or Console(stderr=True)
    result = ReproduceResult(mode=mode)
    with _progress(console, "checks") as progress:
        suites = [_load_suite(t) for t in techniques]
        eta = Estimate(mode, [f"{s.technique}.{c.__name__}" for s in suites for c in s.checks])
        overall = progress.add_task("all", total=len(eta.expected), current=eta.describe())
        tasks = [progress.add_task(s.technique, total=len(s.checks), current="", start=False) for s in suites]
        for suite, task in zip(suites, tasks, strict=True):
            ctx = ClaimContext(technique=suite.technique, article=suite.article, mode=mode, seed=seed, display=progress)
            start = time.perf_counter()
            _run_suite(suite, ctx, _Bars(progress=progress, task=task, overall=overall), eta, debug=debug)
            result.seconds[suite.technique] = time.perf_counter() - start
            result.claims.extend(ctx.claims)
            result.figures.extend(ctx.figures)
            result.articles[suite.technique] = _article_info(suite)
    eta.save()
    return result


@dataclass(frozen=True)
class _Bars:
    """The progress display, the technique's bar and the overall bar."""

    progress: Progress
    task: TaskID
    overall: TaskID


def _run_suite(suite: ClaimSuite, ctx: ClaimContext, bars: _Bars, eta: Estimate, *, debug: bool) -> None:
    """Run the suite's checks in order into ``ctx``, advancing its bar and the overall estimate."""
    progress, task = bars.progress, bars.task
    progress.start_task(task)  # its clock shows this technique's own time
    for check in suite.checks:
        progress.update(task, current=check.__name__)
        began = time.perf_counter()
        suite.run_check(check, ctx, debug=debug)
        eta.done(f"{suite.technique}.{check.__name__}", time.perf_counter() - began)
        progress.advance(task)
        progress.update(bars.overall, advance=1, current=eta.describe())
    progress.update(task, current="")
    progress.stop_task(task)


def _article_info(suite: ClaimSuite) -> dict[str, Any]:
    """The article's title and address and the suite's dashboard headlines, as JSON."""
    return {
        "title": suite.article.title,
        "url": suite.article.url,
        "headlines": [(h if isinstance(h, Headline) else Headline(claim=h)).to_json() for h in suite.headlines],
    }


class Estimate:
    """How long the rest of a run will take.

    Each check's time in the previous run at this scale (kept in the cache folder,
    ``reproduce-timings.json``), else a per-check guess from the scale, corrected by how fast this
    run has gone so far.

    Args:
        mode: the run's scale.
        ids: the ids (``technique.check``) of the checks the run will do.
    """

    GUESS: ClassVar[dict[str, float]] = {"quick": 3.0, "full": 30.0}  # seconds per check never timed here

    mode: Mode
    known: dict[str, float]
    expected: dict[str, float]
    source: str
    actual: dict[str, float]

    def __init__(self, mode: Mode, ids: list[str]) -> None:
        self.mode = mode
        self.known = self._load().get(mode, {})
        self.expected = {i: float(self.known.get(i, self.GUESS[mode])) for i in ids}
        self.source = (
            "from the last run"
            if all(i in self.known for i in ids)
            else ("partly from the last run" if any(i in self.known for i in ids) else f"guessed from the {mode} scale")
        )
        self.actual: dict[str, float] = {}

    @staticmethod
    def _path() -> Path:
        return cache_dir() / "reproduce-timings.json"

    def _load(self) -> dict[str, dict[str, float]]:
        """The stored timings; anything unreadable or of the wrong shape counts as none."""
        try:
            data = json.loads(self._path().read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            mode: {k: float(v) for k, v in times.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for mode, times in data.items()
            if isinstance(times, dict)
        }

    def done(self, check_id: str, seconds: float) -> None:
        """Record that a check ran.

        Args:
            check_id: its id.
            seconds: its time.
        """
        self.actual[check_id] = seconds

    def remaining(self) -> float:
        """Seconds left: the expected time of the checks not run yet, scaled by actual/expected so far.

        Returns:
            The estimate (the scale is clamped to [0.25, 4]).
        """
        left = sum(v for k, v in self.expected.items() if k not in self.actual)
        spent = sum(self.expected[k] for k in self.actual)
        ratio = sum(self.actual.values()) / spent if spent > 0 else 1.0
        return left * min(max(ratio, 0.25), 4.0)

    def describe(self) -> str:
        """The estimate for the progress display.

        Returns:
            ``"about N s left (source)"``, or ``""`` once every check ran.
        """
        if len(self.actual) == len(self.expected):
            return ""
        return f"about {self.remaining():.0f} s left ({self.source})"

    def save(self) -> None:
        """Record this run's times for the next estimate (best effort: an unwritable cache is ignored)."""
        data = self._load()
        data[self.mode] = {**data.get(self.mode, {}), **{k: round(v, 3) for k, v in self.actual.items()}}
        try:
            self._path().parent.mkdir(parents=True, exist_ok=True)
            write_json(self._path(), data)
        except (OSError, ValueError):  # an estimate must never cost the run its results
            pass


def _import_registered(table: dict[str, str], technique: str, what: str) -> Any:
    """The object registered for ``technique`` in ``table``, or the MissingExtra that importing it raised."""
    try:
        return registry.load(table, technique)
    except ImportError as exc:
        missing = as_missing_extra(exc, f"the {technique} {what}")
        if missing is None:
            raise
        return missing


def _raising(name: str, error: Exception) -> Callable[[Any], None]:
    """A check or case named ``name`` that raises ``error`` (recorded as skipped by the suite)."""

    def stand_in(_: Any) -> None:
        raise error

    stand_in.__name__ = name
    return stand_in


def _load_suite(technique: str) -> ClaimSuite:
    """The technique's suite; when importing it needs a missing extra, a one-check suite that is skipped."""
    loaded = _import_registered(registry.SUITES, technique, "claims")
    if isinstance(loaded, ClaimSuite):
        return loaded
    return ClaimSuite(
        technique=technique,
        article=Article(title=f"{technique} (not importable here)", url=""),
        checks=[_raising("claims", loaded)],
    )


def run_benchmarks(
    techniques: list[str],
    *,
    quick: bool = False,
    device: str = "cpu",
    repeats: int = 5,
    console: Console | None = None,
) -> list[Bench]:
    """Run every benchmark case of ``techniques`` (registered names); one :class:`Bench` each.

    Args:
        techniques: registered technique names.
        quick: smaller inputs, for a fast look.
        device: the torch device to run on.
        repeats: timed calls per case.
        console: where the progress bars go (default: stderr).

    Returns:
        One :class:`Bench` per technique, with its cases, ratios and skipped cases.
    """
    console = console or Console(stderr=True)
    benches: list[Bench] = []
    with _progress(console, "cases") as progress:
        suites = [_load_bench(t) for t in techniques]
        tasks = [progress.add_task(s.technique, total=len(s.cases), current="") for s in suites]
        for suite, task in zip(suites, tasks, strict=True):
            bench = Bench(technique=suite.technique, quick=quick, device=device, repeats=repeats)
            for case in suite.cases:
                progress.update(task, current=case.__name__)
                suite.run_case(case, bench)
                progress.advance(task)
            progress.update(task, current="")
            benches.append(bench)
    return benches


def _load_bench(technique: str) -> BenchSuite:
    """The technique's benchmarks; when importing them needs a missing extra, one case that is skipped."""
    loaded = _import_registered(registry.BENCHMARKS, technique, "benchmarks")
    if isinstance(loaded, BenchSuite):
        return loaded
    return BenchSuite(technique=technique, cases=[_raising("benchmarks", loaded)])


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
