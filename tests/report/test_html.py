from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from kexue.report.claims import Article, ClaimContext
from kexue.report.html import format_value, render_bench, render_report
from kexue.report.runner import ReproduceResult


def _result() -> ReproduceResult:
    import matplotlib.pyplot as plt

    ctx = ClaimContext("orthogonal", Article("Title <&>", "https://kexue.fm/archives/8453"))
    ctx.claim("x.ok", "statement <b>", article_value="T Tᵀ = I", measured=1e-16, tolerance=1e-12, passed=True)
    ctx.claim("x.bad", "s", article_value=1.0, measured=2.0, passed=False, details="why")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ctx.figure("line", fig, "a line")
    result = ReproduceResult(mode="quick", claims=ctx.claims, figures=ctx.figures)
    ctx.claim(
        "x.table",
        "a structured value",
        article_value={"BERT-base": {"raw": 56.7, "whitened": 66.3}},
        measured={"first-last-avg": {"raw": 57.64, "whitened": 68.1}, "cls": {"raw": 40.2, "whitened": 61.0}},
        passed=True,
    )
    ctx.claim("x.list", "a long list", article_value=None, measured=[0.1 * i for i in range(12)], documented=True)
    ctx.claim(
        "x.records",
        "records",
        article_value=None,
        measured=[{"rule": "greedy", "R": "inf"}, {"rule": "topk=40", "R": 3.5}],
        documented=True,
    )
    result = ReproduceResult(mode="quick", claims=ctx.claims, figures=ctx.figures)
    result.articles["orthogonal"] = {
        "title": "Title <&>",
        "url": "https://kexue.fm/archives/8453",
        "headlines": ["x.ok", "x.table"],
    }
    result.seconds["orthogonal"] = 1.0
    return result


class _Page(HTMLParser):
    """The parts of a report the structure test checks: ids, internal links, cells, figures, dashboard rows."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.cells: list[str] = []
        self.figures = self.captions = self.dashboard_rows = 0
        self._cell: list[str] | None = None
        self._tables: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if tag == "table":
            self._tables.append(a.get("class", ""))
        if tag == "tr" and self._tables and self._tables[-1] == "dashboard":
            self.dashboard_rows += 1
        if tag in ("td", "th"):
            self._cell = []
        self.figures += tag == "figure"
        self.captions += tag == "figcaption"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None
        if tag == "table" and self._tables:
            self._tables.pop()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def test_report_structure_dashboard_tables_links_and_figures() -> None:
    result = _result()
    page = render_report(result.to_json(), result.figures, {"date": "today", "processor": "cpu"})
    parsed = _parse(page)
    assert parsed.dashboard_rows == 1 + 1  # the header row and one row per technique
    assert not [c for c in parsed.cells if "{'" in c or c.startswith("[")], "a Python repr in a table cell"
    assert parsed.figures == parsed.captions == 1
    assert set(parsed.links) <= parsed.ids, f"internal links without a target: {set(parsed.links) - parsed.ids}"
    assert {"orthogonal", "orthogonal.x.ok", "orthogonal.x.table", "machine", "dashboard"} <= parsed.ids
    # the structured value is a real table: its keys and numbers are cells of their own
    assert {"first-last-avg", "cls", "raw", "whitened", "57.64", "68.1", "BERT-base", "56.7"} <= set(parsed.cells)
    assert {"greedy", "topk=40", "inf", "3.5", "rule", "R"} <= set(parsed.cells)
    assert "0.6" in parsed.cells and "11" in parsed.cells  # the 12-value list: one cell per value, indexed


def test_bench_page_bars_and_times() -> None:
    payload = {
        "machine": {"date": "today", "processor": "cpu", "device": "cpu"},
        "quick": True,
        "cases": [
            {
                "technique": "rope",
                "case": "apply",
                "impl": "kexue",
                "median_s": 0.002,
                "times_s": [0.002],
                "params": {},
            },
            {
                "technique": "rope",
                "case": "apply",
                "impl": "HF",
                "median_s": 0.006,
                "times_s": [0.006],
                "params": {},
                "peak_bytes": 2**21,
            },
        ],
        "ratios": [
            {
                "id": "rope.vs_hf",
                "value": 3.0,
                "target": 2.0,
                "higher_is_better": True,
                "met": True,
                "description": "HF / kexue",
            },
            {
                "id": "rope.memory",
                "value": 1.5,
                "target": 1.2,
                "higher_is_better": False,
                "met": False,
                "description": "m",
            },
            {
                "id": "rope.info",
                "value": 0.5,
                "target": None,
                "higher_is_better": True,
                "met": None,
                "description": "i",
            },
        ],
        "skipped": [{"technique": "rope", "case": "peer", "reason": "needs the 'bench' extra"}],
    }
    page = render_bench(payload)
    parsed = _parse(page)
    assert "1 targets met" in page and "1 missed" in page and "1 reported" in page and "1 cases skipped" in page
    assert page.count("class='bar'") == 3 and "<span class='met'" in page and "<span class='missed'" in page
    assert "width:87.0%" in page and "left:58.0%" in page  # 3.0 and the target 2.0 on a scale of 3.0 * 1.15
    assert {"kexue", "HF", "2.000 ms", "6.000 ms", "3.00×", "1.00×", "2.0 MiB"} <= set(parsed.cells)
    assert set(parsed.links) <= parsed.ids
    assert "needs the 'bench' extra" in parsed.cells


def test_report_is_self_contained_and_escaped() -> None:
    result = _result()
    page = render_report(result.to_json(), result.figures, {"date": "today", "processor": "cpu"})
    assert "<img alt='line' src='data:image/png;base64," in page
    assert "Title &lt;&amp;&gt;" in page and "statement &lt;b&gt;" in page
    # nothing is loaded from elsewhere: no script, stylesheet or image URL
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"src=['\"]https?:", page)
    assert "class='badge pass'" in page and "class='badge fail'" in page


def test_summary_counts() -> None:
    payload = _result().to_json()
    assert payload["summary"] == {"pass": 2, "fail": 1, "documented": 2, "skipped": 0}
    assert payload["techniques"]["orthogonal"]["figures"] == ["line"]


def test_format_value() -> None:
    assert format_value(None) == "—"
    assert format_value(1.5e-16) == "1.500e-16"
    assert format_value(0.25) == "0.25"
    assert format_value([1.0, "x"]) == "1, x"
    assert format_value({"a": 1}) == "(table of 1 entries: see report.html)"


def test_purpose_built_table_replaces_the_generic_rendering() -> None:
    import pytest

    from kexue.report.claims import Table

    ctx = ClaimContext("whitening", Article("t", "https://kexue.fm/archives/8069"))
    table = Table(
        ("pooling", "variant", "STS-B", "mean"),
        (
            ("cls", "raw", 40.25, 41.0),
            ("cls", "whitening", 61.5, 60.0),
            ("avg", "raw", 70.0, 69.5),
            ("article", "whitening", 71.34, 70.0),
        ),
        header_columns=2,
        reference_rows=(3,),
        caption="Spearman x100",
    )
    ctx.claim(
        "table", "s", article_value=None, measured={"cls": {"raw": {"STS-B": 40.25}}}, documented=True, table=table
    )
    result = ReproduceResult(mode="quick", claims=ctx.claims, figures=[])
    result.articles["whitening"] = {"title": "t", "url": "https://kexue.fm/archives/8069", "headlines": []}
    result.seconds["whitening"] = 1.0
    payload = result.to_json()
    assert payload["claims"][0]["table"]["rows"][3] == [
        "article",
        "whitening",
        71.34,
        70.0,
    ]  # results.json keeps the table
    assert payload["claims"][0]["measured"] == {"cls": {"raw": {"STS-B": 40.25}}}  # and the raw value
    page = render_report(payload, [], {"date": "today"})
    parsed = _parse(page)
    assert "<caption>Spearman x100</caption>" in page and "<tr class='ref'>" in page
    # a repeated group label is shown once: "cls" heads its group, the row below starts with an empty heading
    assert page.count("<th>cls</th>") == 1 and "<tr><th></th><th>whitening</th>" in page
    assert {"40.25", "61.5", "71.34", "STS-B", "mean"} <= set(parsed.cells)
    assert "{'" not in page
    with pytest.raises(ValueError, match="do not have 4 cells"):
        Table(("a", "b", "c", "d"), (("x", 1.0),))
    with pytest.raises(ValueError, match="scalars"):
        Table(("a", "b"), (("x", [1.0]),))
    with pytest.raises(ValueError, match="header_columns"):
        Table(("a",), (("x",),), header_columns=2)


@pytest.mark.slow
def test_a_real_quick_report_has_the_structure(tmp_path, monkeypatch) -> None:
    """Every technique at quick scale: the page a newcomer sees after ``make demo``."""
    import json

    from kexue.cli import main

    monkeypatch.setenv("KEXUE_NO_CACHE", "1")
    assert main(["reproduce", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    payload = json.loads((tmp_path / "results.json").read_text())
    parsed = _parse(page)
    assert parsed.dashboard_rows == 1 + len(payload["techniques"]) == 9
    reprs = [c for c in parsed.cells if "{'" in c or "['" in c or re.search(r"\[-?\d[\d.e-]*, -?\d", c)]
    assert not reprs, f"a Python repr in a table cell: {reprs[:3]}"
    assert parsed.figures == parsed.captions > 0
    assert set(parsed.links) <= parsed.ids, f"internal links without a target: {set(parsed.links) - parsed.ids}"
    built = {c["id"] for c in payload["claims"] if c.get("table")}
    assert {
        "whitening.table.wmean",
        "growth.parity_table",
        "mitchell.error_bounds",
        "repetition.order_char",
        "rope.vit.all_variants_learn",
    } <= built
    assert page.count("<table class='value built'>") == len(built)
    assert "article: BERT-base, first-last-avg" in parsed.cells  # the article's rows beside ours
