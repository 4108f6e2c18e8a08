"""Claims: the article's checkable statements, as run by ``kexue reproduce``.

A technique's ``claims.py`` builds one :class:`ClaimSuite` and registers checks on it::

    SUITE = ClaimSuite("orthogonal", article=Article("The orthogonal matrix ...", "https://kexue.fm/archives/8453"))

    @SUITE.check
    def orthogonality(ctx: ClaimContext) -> None:
        err = ...
        ctx.claim("symmetric.orthogonality", "T Tᵀ = I", article_value="T Tᵀ = I",
                  measured=err, tolerance=1e-12, passed=err <= 1e-12)

Each check records one or more :class:`Claim`s and optionally figures. The runner
(:mod:`kexue.report.runner`) calls every check with a fresh context, catches a check that
crashes (recorded as a failed claim, so one bug cannot hide the rest) or that cannot run here
because its data or an optional extra is missing (recorded as ``skipped`` with the reason, which
is neither a pass nor a failure of the article), and hands the results to the writers.
"""

from __future__ import annotations

import base64
import io
import math
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "STATUSES",
    "Article",
    "Claim",
    "ClaimContext",
    "ClaimSuite",
    "Figure",
    "Headline",
    "Status",
    "Table",
    "json_value",
]

Status = Literal["pass", "fail", "documented", "skipped"]
STATUSES: tuple[str, ...] = ("pass", "fail", "documented", "skipped")
Mode = Literal["quick", "full"]


@dataclass(frozen=True)
class Article:
    """The source of a technique's claims."""

    title: str
    url: str
    note: str = ""


@dataclass(frozen=True)
class Headline:
    """One result the report's dashboard shows for a technique: claim ``name`` (or the first claim whose
    name starts with it), optionally one entry of a structured value (``path``: the keys leading to
    it; the article's value is looked up at the same path, or at its last key), under ``label``."""

    claim: str
    path: tuple[str, ...] = ()
    label: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Table:
    """A purpose-built table for one claim: the report shows it under the claim in place of the
    generic rendering of the claim's value (results.json keeps both the raw value and the table).

    Args:
        columns: the column headings.
        rows: one tuple of scalars per row, as long as ``columns``.
        header_columns: how many leading columns label the row (shown as row headings; a value
            repeated from the row above is shown once, so groups read as groups).
        reference_rows: indices of rows that hold the article's (or a peer's) values, set apart
            from kexue's own.
        caption: one sentence saying what the numbers are.
        decimals: show every float with this many decimals (a column of scores reads evenly);
            ``None``: six significant digits.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    header_columns: int = 1
    reference_rows: tuple[int, ...] = ()
    caption: str = ""
    decimals: int | None = None

    def __post_init__(self) -> None:
        width = len(self.columns)
        bad = [i for i, row in enumerate(self.rows) if len(row) != width]
        if bad:
            raise ValueError(f"Table rows {bad} do not have {width} cells (the number of columns)")
        if not 0 <= self.header_columns <= width:
            raise ValueError(f"header_columns={self.header_columns} must be in [0, {width}]")
        if any(isinstance(v, (list, tuple, dict)) for row in self.rows for v in row):
            raise ValueError("Table cells must be scalars (numbers, strings, None)")

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "rows": [json_value(list(r)) for r in self.rows],
            "header_columns": self.header_columns,
            "reference_rows": list(self.reference_rows),
            "caption": self.caption,
            "decimals": self.decimals,
        }


@dataclass(frozen=True)
class Claim:
    """One verdict in ``results.json``; ``id`` is dotted and stable (``technique.group.name``)."""

    id: str
    technique: str
    article: str
    statement: str
    article_value: Any
    measured: Any
    tolerance: Any
    status: Status
    details: str = ""
    table: dict[str, Any] | None = None  # Table.to_json(): the report's purpose-built view of the value

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Figure:
    """A PNG figure for the HTML report."""

    technique: str
    name: str
    caption: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class ClaimContext:
    """What a check receives: the scale to run at and the sinks for claims and figures."""

    technique: str
    article: Article
    mode: Mode = "quick"
    seed: int = 0
    claims: list[Claim] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    display: Any = None  # the runner's rich Progress: long inner loops show as sub-bars of its one display

    @contextmanager
    def steps(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """``with ctx.steps("training", n) as advance: ... advance()`` (or ``advance(k)``): a sub-bar of the
        run's one progress display for a long inner loop, removed when the loop ends; a no-op without one."""
        if self.display is None:
            yield lambda k=1: None
            return
        task = self.display.add_task(f"  {description}", total=total, current="")
        try:
            yield lambda k=1: self.display.advance(task, k)
        finally:
            self.display.remove_task(task)

    @property
    def by_id(self) -> dict[str, Claim]:
        """The claims recorded so far, by id."""
        return {c.id: c for c in self.claims}

    @property
    def full(self) -> bool:
        return self.mode == "full"

    def claim(
        self,
        name: str,
        statement: str,
        *,
        article_value: Any,
        measured: Any,
        tolerance: Any = None,
        passed: bool | None = None,
        documented: bool = False,
        details: str = "",
        table: Table | None = None,
    ) -> Claim:
        """Record a claim. Exactly one of ``passed`` (a verdict) or ``documented=True``.

        ``documented`` is for a limitation the article itself admits, reported with its
        measured size rather than judged. ``table``: a purpose-built :class:`Table` the report
        shows for this claim instead of the generic rendering of its values.
        """
        if documented == (passed is not None):
            raise ValueError("claim(): give exactly one of passed=<bool> or documented=True")
        status: Status = "documented" if documented else ("pass" if passed else "fail")
        claim = Claim(
            id=f"{self.technique}.{name}",
            technique=self.technique,
            article=self.article.url,
            statement=statement,
            article_value=json_value(article_value),
            measured=json_value(measured),
            tolerance=json_value(tolerance),
            status=status,
            details=details,
            table=None if table is None else table.to_json(),
        )
        self.claims.append(claim)
        return claim

    def skip(self, name: str, statement: str, reason: str) -> Claim:
        """Record that ``name`` could not be checked here (missing data or extra): status ``skipped``."""
        claim = Claim(
            id=f"{self.technique}.{name}",
            technique=self.technique,
            article=self.article.url,
            statement=statement,
            article_value=None,
            measured=None,
            tolerance=None,
            status="skipped",
            details=reason,
        )
        self.claims.append(claim)
        return claim

    def figure(self, name: str, fig: Any, caption: str) -> None:
        """Store a matplotlib figure (closed afterwards) as an embedded PNG."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(Figure(self.technique, name, caption, buffer.getvalue()))


Check = Callable[[ClaimContext], None]


@dataclass
class ClaimSuite:
    """The ordered checks of one technique."""

    technique: str
    article: Article
    checks: list[Check] = field(default_factory=list)
    # the report's dashboard shows these results, the article's value beside ours (a bare string is
    # Headline(string): a claim name or name prefix)
    headlines: tuple[str | Headline, ...] = ()

    def check(self, fn: Check) -> Check:
        """Decorator: register ``fn`` as the next check."""
        self.checks.append(fn)
        return fn

    def run_check(self, fn: Check, ctx: ClaimContext, *, debug: bool = False) -> None:
        """Run one check; a crash becomes a failed claim named after the check, missing data or extras a skipped one."""
        from kexue._optional import skip_reason

        try:
            fn(ctx)
        except Exception as exc:
            reason = skip_reason(exc)
            if reason is not None:
                ctx.skip(f"{fn.__name__}.skipped", f"check {fn.__name__} could not run here", reason)
                return
            if debug:
                raise
            ctx.claim(
                f"{fn.__name__}.error",
                f"check {fn.__name__} ran to completion",
                article_value=None,
                measured=f"{type(exc).__name__}: {exc}",
                passed=False,
                details=traceback.format_exc(limit=4),
            )


def json_value(value: Any) -> Any:
    """NumPy / torch scalars to Python numbers, so the value serialises to JSON."""
    if type(value) is float and not math.isfinite(value):
        return str(value)  # "nan" / "inf": strict JSON has no such numbers
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item):
        return json_value(item())
    return str(value)
