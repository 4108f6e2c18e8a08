from __future__ import annotations

import re

from kexue.report.claims import Article, ClaimContext
from kexue.report.html import format_value, render_report
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
    result.articles["orthogonal"] = {"title": "Title <&>", "url": "https://kexue.fm/archives/8453"}
    result.seconds["orthogonal"] = 1.0
    return result


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
    assert payload["summary"] == {"pass": 1, "fail": 1, "documented": 0, "skipped": 0}
    assert payload["techniques"]["orthogonal"]["figures"] == ["line"]


def test_format_value() -> None:
    assert format_value(None) == "—"
    assert format_value(1.5e-16) == "1.500e-16"
    assert format_value(0.25) == "0.25"
    assert format_value([1.0, "x"]) == "[1, x]"
