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
from typing import TYPE_CHECKING, Any, Literal, get_args

from kexue._optional import skip_reason

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "MODES",
    "STATUSES",
    "Article",
    "Claim",
    "ClaimContext",
    "ClaimSuite",
    "Figure",
    "Headline",
    "Mode",
    "Status",
    "Table",
    "json_value",
]

Status = Literal["pass", "fail", "documented", "skipped"]
STATUSES: tuple[Status, ...] = get_args(Status)
Mode = Literal["quick", "full"]
MODES: tuple[Mode, ...] = get_args(Mode)


@dataclass(frozen=True)
class Article:
    """The source of a technique's claims.

    Args:
        title: the article's title.
        url: its address.
        note: anything a reader should know about the reproduction.
    """

    title: str
    url: str
    note: str = ""


@dataclass(frozen=True)
class Headline:
    """One result the report's dashboard shows for a technique: claim ``name`` (or the first claim whose
    name starts with it), optionally one entry of a structured value (``path``: the keys leading to
    it; the article's value is looked up at the same path, or at its last key), under ``label``.

    Args:
        claim: the claim's name (without the technique), or a prefix of it.
        path: keys into the claim's structured value.
        label: the dashboard's text (default: the claim's statement).
    """

    claim: str
    path: tuple[str, ...] = ()
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        """The headline as JSON (``claim``, ``path``, ``label``).

        Returns:
            A JSON-able mapping.
        """
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
        """The table as JSON (what ``results.json`` stores and the report renders).

        Returns:
            A JSON-able mapping.
        """
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
    """One verdict in ``results.json``; ``id`` is dotted and stable (``technique.group.name``).

    Args:
        id: the claim's id.
        technique: the technique's name.
        article: the article's address.
        statement: what the article says.
        article_value: the article's number (JSON-able).
        measured: kexue's number (JSON-able).
        tolerance: the bound the verdict used, if any.
        status: the verdict.
        details: a note, or the reason of a skip, or a traceback.
        table: a purpose-built view of the values (:meth:`Table.to_json`).
    """

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
        """The claim as JSON (one entry of ``results.json``'s ``claims``).

        Returns:
            A JSON-able mapping.
        """
        return asdict(self)


@dataclass(frozen=True)
class Figure:
    """A PNG figure for the HTML report.

    Args:
        technique: the technique's name.
        name: the figure's name (unique within the technique).
        caption: one or two sentences saying what it shows.
        png: the image.
    """

    technique: str
    name: str
    caption: str
    png: bytes

    def data_uri(self) -> str:
        """The image as a ``data:`` URI for an ``<img>`` tag.

        Returns:
            The URI.
        """
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class ClaimContext:
    """What a check receives: the scale to run at and the sinks for claims and figures.

    Args:
        technique: the technique's name (the prefix of every claim id).
        article: the article the claims come from.
        mode: the scale to run at.
        seed: the seed of the random inputs.
        claims: the claims recorded so far.
        figures: the figures recorded so far.
        display: the runner's progress display, for sub-bars (see :meth:`steps`).
    """

    technique: str
    article: Article
    mode: Mode = "quick"
    seed: int = 0
    claims: list[Claim] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    display: Progress | None = None  # the runner's rich Progress: long inner loops show as sub-bars of its one display

    @contextmanager
    def steps(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A sub-bar of the run's one progress display for a long inner loop, removed when the loop ends.

        ``with ctx.steps("training", n) as advance: ... advance()`` (or ``advance(k)``); a no-op
        without a display.

        Args:
            description: the sub-bar's label.
            total: the number of steps.

        Yields:
            ``advance(k=1)``, to call after each step (or ``k`` steps).
        """
        display = self.display
        if display is None:
            yield lambda k=1: None
            return
        task = display.add_task(f"  {description}", total=total, current="")
        try:
            yield lambda k=1: display.advance(task, k)
        finally:
            display.remove_task(task)

    @property
    def by_id(self) -> dict[str, Claim]:
        """The claims recorded so far, by id."""
        return {c.id: c for c in self.claims}

    @property
    def full(self) -> bool:
        """Whether the run is at full scale."""
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

        Args:
            name: the claim's name within the technique (dotted).
            statement: what the article says.
            article_value: the article's number (converted with :func:`json_value`).
            measured: kexue's number (converted with :func:`json_value`).
            tolerance: the bound of the verdict, if any.
            passed: the verdict.
            documented: a limitation the article itself admits, reported with its measured size
                rather than judged.
            details: a note for the report.
            table: a purpose-built :class:`Table` the report shows for this claim instead of the
                generic rendering of its values.

        Returns:
            The recorded claim.

        Raises:
            ValueError: neither or both of ``passed`` and ``documented=True``.
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
        """Record that ``name`` could not be checked here (missing data or extra): status ``skipped``.

        Args:
            name: the claim's name within the technique.
            statement: what could not be checked.
            reason: why (the missing extra or data).

        Returns:
            The recorded claim.
        """
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
        """Store a matplotlib figure (closed afterwards) as an embedded PNG.

        Args:
            name: the figure's name.
            fig: a ``matplotlib.figure.Figure`` (the ``report`` extra; typed ``Any`` as matplotlib
                is optional).
            caption: what it shows.
        """
        import matplotlib.pyplot as plt  # optional extra: report

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(Figure(technique=self.technique, name=name, caption=caption, png=buffer.getvalue()))


Check = Callable[[ClaimContext], None]


@dataclass
class ClaimSuite:
    """The ordered checks of one technique.

    Args:
        technique: the technique's name.
        article: the article the claims come from.
        checks: the checks, in order (usually registered with :meth:`check`).
        headlines: the results the report's dashboard shows.
    """

    technique: str
    article: Article
    checks: list[Check] = field(default_factory=list)
    # the report's dashboard shows these results, the article's value beside ours (a bare string is
    # Headline(string): a claim name or name prefix)
    headlines: tuple[str | Headline, ...] = ()

    def check(self, fn: Check) -> Check:
        """Decorator: register ``fn`` as the next check.

        Args:
            fn: the check.

        Returns:
            ``fn`` itself.
        """
        self.checks.append(fn)
        return fn

    def run_check(self, fn: Check, ctx: ClaimContext, *, debug: bool = False) -> None:
        """Run one check; a crash becomes a failed claim named after the check, missing data or extras a skipped one.

        Args:
            fn: the check.
            ctx: the context it records into.
            debug: re-raise a crash instead of recording it.
        """
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
    """NumPy / torch scalars to Python numbers, so the value serialises to JSON.

    Args:
        value: a scalar, or a list, tuple or dict of them (nested).

    Returns:
        The JSON-able value (non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"``).

    Example:
        >>> json_value({"x": (1, float("nan"))})
        {'x': [1, 'nan']}
    """
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
