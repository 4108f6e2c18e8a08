"""Self-contained HTML reports: inline CSS, figures embedded as PNG data URIs, no scripts.

``render_report`` writes ``kexue reproduce``'s page: a dashboard (one row per technique: its
article, verdict counts, headline results with the article's value beside ours, time, a link
to its section), a table of contents, then one section per technique whose claims show
structured values (mappings, lists) as real tables, never as a Python repr. ``render_bench``
writes ``kexue bench``'s page: each ratio as a bar against its target, the cases' times side by
side, the machine. Both open offline in any browser; nothing is fetched.
"""

from __future__ import annotations

from html import escape
from typing import Any

from kexue.report.claims import STATUSES, Figure

__all__ = ["format_value", "render_bench", "render_report", "render_table", "render_value"]

_CSS = (
    "\n"
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,'Noto Sans CJK SC','PingFang SC','Microsoft YaHei',"
    "sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d1d1f;line-height:1.45}\n"
    "h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:2px solid #e5e5ea;padding-bottom:.3rem}\n"
    ".meta{color:#6e6e73;font-size:.9rem}\n"
    ".summary span{display:inline-block;margin-right:.6rem;padding:.2rem .7rem;border-radius:1rem;font-weight:600}"
    "\n"
    "table{border-collapse:collapse;width:100%;font-size:.88rem;margin:.8rem 0}\n"
    "table.claims{table-layout:fixed}\n"
    "table.claims col.c1{width:25%}table.claims col.c2{width:31%}table.claims col.c3{width:14%}"
    "table.claims col.c4{width:12%}table.claims col.c5{width:8%}table.claims col.c6{width:10%}\n"
    "th,td{border-bottom:1px solid #e5e5ea;padding:.35rem .5rem;text-align:left;vertical-align:top}\n"
    "th{background:#f5f5f7} td{overflow-wrap:anywhere}"
    " td.num{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}\n"
    "table.value{width:auto;font-size:.8rem;margin:.3rem 0}"
    " table.value th,table.value td{padding:.15rem .45rem}\n"
    "tr.structured>td{background:#fafafc;padding:.3rem .8rem .8rem}"
    " .side{display:inline-block;vertical-align:top;margin-right:2rem}\n"
    ".side>b{display:block;font-size:.8rem;color:#6e6e73}\n"
    "table.dashboard td{vertical-align:top} .headline{font-size:.82rem;margin-bottom:.25rem}\n"
    "code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em}\n"
    ".pass{background:#e3f9e5;color:#1b7a2b}.fail{background:#fde8e8;color:#b42318}"
    ".documented{background:#fff4d6;color:#8a5a00}.skipped{background:#e8f0fd;color:#1a4fa0}\n"
    ".badge{padding:.1rem .5rem;border-radius:.6rem;font-weight:600;font-size:.8rem;white-space:nowrap}\n"
    "nav.toc{font-size:.9rem;margin:.6rem 0} nav.toc a{margin-right:.9rem}\n"
    "a.top{font-size:.8rem;font-weight:normal;margin-left:.8rem}\n"
    "figure{margin:1rem 0;display:inline-block;max-width:100%}"
    " figure img{max-width:100%;border:1px solid #e5e5ea}\n"
    "figcaption{color:#6e6e73;font-size:.85rem;max-width:900px}\n"
    "details{font-size:.8rem;color:#6e6e73}\n"
    ".bar{position:relative;height:1.1rem;background:#f0f0f3;border-radius:.3rem;min-width:14rem}\n"
    ".bar>span{position:absolute;left:0;top:0;bottom:0;border-radius:.3rem}\n"
    ".bar>i{position:absolute;top:-.15rem;bottom:-.15rem;width:2px;background:#1d1d1f}\n"
    "table.built caption{caption-side:top;text-align:left;color:#6e6e73;font-size:.8rem;padding:.2rem 0}\n"
    "table.built tr.ref td,table.built tr.ref th{background:#fff8e6;font-style:italic}\n"
    ".met{background:#7bd88f}.missed{background:#f29b9b}.reported{background:#b9c6e4}\n"
)

_MAX_INLINE = 8  # a list longer than this is shown as a table, not inline


def format_value(value: Any) -> str:
    """A compact human form of a scalar (floats to 6 significant digits, tiny and huge ones in e-notation)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return _plain_summary(value)
    return str(value)


def _plain_summary(value: list | dict) -> str:
    """A one-line stand-in for a structured value in plain text (the terminal table)."""
    if isinstance(value, list) and len(value) <= _MAX_INLINE and all(_is_scalar(v) for v in value):
        return ", ".join(format_value(v) for v in value)
    kind = f"{len(value)} entries" if isinstance(value, dict) else f"{len(value)} values"
    return f"(table of {kind}: see report.html)"


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (list, dict))


def is_structured(value: Any) -> bool:
    """Whether ``value`` is shown as a table rather than inline."""
    return isinstance(value, dict) or (
        isinstance(value, list) and (len(value) > _MAX_INLINE or not all(map(_is_scalar, value)))
    )


def render_value(value: Any) -> str:
    """HTML for a claim's value: scalars inline, mappings and lists as tables (nested where needed)."""
    if _is_scalar(value):
        return escape(format_value(value))
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return _records_table(value)
        if not is_structured(value):
            return escape(", ".join(format_value(v) for v in value))
        cells = "".join(f"<td class='num'>{render_value(v)}</td>" for v in value)
        heads = "".join(f"<th>{i}</th>" for i in range(len(value)))
        return f"<table class='value'><tr>{heads}</tr><tr>{cells}</tr></table>"
    if value and all(isinstance(v, dict) and not any(map(is_structured, v.values())) for v in value.values()):
        return _matrix_table(value)
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td class='num'>{render_value(v)}</td></tr>" for k, v in value.items()
    )
    return f"<table class='value'>{rows}</table>"


def _matrix_table(value: dict[str, dict[str, Any]]) -> str:
    """Rows = outer keys, columns = the union of the inner keys."""
    columns: list[str] = []
    for inner in value.values():
        columns.extend(k for k in inner if k not in columns)
    head = "<tr><th></th>" + "".join(f"<th>{escape(str(c))}</th>" for c in columns) + "</tr>"
    body = "".join(
        f"<tr><th>{escape(str(k))}</th>"
        + "".join(f"<td class='num'>{render_value(inner.get(c))}</td>" for c in columns)
        + "</tr>"
        for k, inner in value.items()
    )
    return f"<table class='value'>{head}{body}</table>"


def _records_table(records: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for record in records:
        columns.extend(k for k in record if k not in columns)
    head = "<tr>" + "".join(f"<th>{escape(str(c))}</th>" for c in columns) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{render_value(r.get(c))}</td>" for c in columns) + "</tr>" for r in records
    )
    return f"<table class='value'>{head}{body}</table>"


def _cell(value: Any, decimals: int | None) -> str:
    if decimals is not None and isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.{decimals}f}"
    return format_value(value)


def render_table(table: dict[str, Any]) -> str:
    """HTML for a claim's purpose-built table (:class:`kexue.report.claims.Table` as JSON)."""
    h = table["header_columns"]
    reference = set(table["reference_rows"])
    head = "<tr>" + "".join(f"<th>{escape(str(c))}</th>" for c in table["columns"]) + "</tr>"
    unset = object()
    body, previous = [], [unset] * h
    for i, row in enumerate(table["rows"]):
        if i in reference and i - 1 not in reference:
            previous = [unset] * h  # the reference rows start a group of their own
        labels = [
            ("" if all(row[q] == previous[q] for q in range(j + 1)) else escape(format_value(row[j]))) for j in range(h)
        ]
        previous = list(row[:h])
        cells = "".join(f"<th>{label}</th>" for label in labels)
        cells += "".join(f"<td class='num'>{escape(_cell(v, table.get('decimals')))}</td>" for v in row[h:])
        body.append(f"<tr class='ref'>{cells}</tr>" if i in reference else f"<tr>{cells}</tr>")
    caption = f"<caption>{escape(table['caption'])}</caption>" if table.get("caption") else ""
    return f"<table class='value built'>{caption}{head}{''.join(body)}</table>"


def _badge(status: str) -> str:
    return f"<span class='badge {escape(status)}'>{escape(status)}</span>"


def _headline(claims: list[dict[str, Any]], technique: str, prefix: str) -> dict[str, Any] | None:
    full = f"{technique}.{prefix}"
    return next((c for c in claims if c["id"] == full), None) or next(
        (c for c in claims if c["id"].startswith(full)), None
    )


def _at(value: Any, path: list[str]) -> Any:
    """``value[k1][k2]...`` for ``path`` = ``[k1, k2, ...]``; None where the path does not exist."""
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _headline_values(claim: dict[str, Any], path: list[str]) -> tuple[Any, Any]:
    """(article's value, ours) for a headline: at ``path`` in both, the article's also at its last key."""
    ours = _at(claim["measured"], path)
    theirs = _at(claim["article_value"], path) if path else claim["article_value"]
    if theirs is None and path and isinstance(claim["article_value"], dict):
        theirs = claim["article_value"].get(path[-1])
    if theirs is None and path and not isinstance(claim["article_value"], (dict, list)):
        theirs = claim["article_value"]
    return theirs, ours


def _dashboard_cell(value: Any) -> str:
    return "table below" if is_structured(value) else render_value(value)


def _dashboard(payload: dict[str, Any]) -> str:
    rows = []
    for technique, info in payload["techniques"].items():
        claims = [c for c in payload["claims"] if c["technique"] == technique]
        counts = " ".join(
            f"<span class='badge {s}'>{sum(c['status'] == s for c in claims)} {s}</span>"
            for s in STATUSES
            if any(c["status"] == s for c in claims)
        )
        heads = []
        for spec in info.get("headlines", []):
            spec = spec if isinstance(spec, dict) else {"claim": spec, "path": [], "label": ""}
            c = _headline(claims, technique, spec["claim"])
            if c is None:
                continue
            theirs, ours = _headline_values(c, spec["path"])
            label = spec["label"] or c["statement"]
            heads.append(
                f"<div class='headline'>{_badge(c['status'])} <a href='#{escape(c['id'])}'>{escape(label)}</a>"
                f"<br>article: <b>{_dashboard_cell(theirs)}</b> · kexue: <b>{_dashboard_cell(ours)}</b></div>"
            )
        article = escape(info["title"])
        if info.get("url"):
            article = f"<a href='{escape(info['url'])}'>{article}</a>"
        rows.append(
            f"<tr><td><a href='#{escape(technique)}'><b>{escape(technique)}</b></a></td><td>{article}</td>"
            f"<td>{counts}</td><td>{''.join(heads) or '—'}</td><td class='num'>{info['seconds']:.1f} s</td></tr>"
        )
    return (
        "<table class='dashboard'><thead><tr><th>technique</th><th>article</th><th>verdicts</th>"
        "<th>headline results (the article's value beside ours)</th><th>time</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _claim_rows(c: dict[str, Any]) -> str:
    details = f"<details><summary>details</summary><pre>{escape(c['details'])}</pre></details>" if c["details"] else ""
    table = c.get("table")
    structured = table is not None or is_structured(c["measured"]) or is_structured(c["article_value"])
    article = "see below" if is_structured(c["article_value"]) else render_value(c["article_value"])
    measured = "see below" if is_structured(c["measured"]) else render_value(c["measured"])
    row = (
        f"<tr id='{escape(c['id'])}'><td><code>{escape(c['id']).replace('.', '.<wbr>')}</code></td>"
        f"<td>{escape(c['statement'])}{details}</td><td>{article}</td><td class='num'>{measured}</td>"
        f"<td class='num'>{render_value(c['tolerance'])}</td><td>{_badge(c['status'])}</td></tr>"
    )
    if not structured:
        return row
    if table is not None:
        return row + f"<tr class='structured'><td colspan='6'>{render_table(table)}</td></tr>"
    sides = []
    for label, key in (("article", "article_value"), ("kexue (measured)", "measured")):
        if c[key] is not None:
            sides.append(f"<div class='side'><b>{label}</b>{render_value(c[key])}</div>")
    return row + f"<tr class='structured'><td colspan='6'>{''.join(sides)}</td></tr>"


def _section(technique: str, info: dict[str, Any], claims: list[dict[str, Any]], figures: list[Figure]) -> list[str]:
    title = escape(info["title"])
    article = f"<a href='{escape(info['url'])}'>{title}</a>" if info.get("url") else title
    parts = [
        f"<h2 id='{escape(technique)}'>{escape(technique)}<a class='top' href='#dashboard'>↑ dashboard</a></h2>",
        f"<p class='meta'>Article: {article} · {len(claims)} claims in {info['seconds']:.1f} s</p>",
        "<table class='claims'><colgroup>" + "".join(f"<col class='c{i}'>" for i in range(1, 7)) + "</colgroup>"
        "<thead><tr><th>claim</th><th>statement</th><th>article</th><th>measured</th>"
        "<th>tolerance</th><th>verdict</th></tr></thead><tbody>",
    ]
    parts.extend(_claim_rows(c) for c in claims)
    parts.append("</tbody></table>")
    parts.extend(
        f"<figure id='fig-{escape(technique)}-{escape(fig.name)}'><img alt='{escape(fig.name)}' src='{fig.data_uri()}'>"
        f"<figcaption><b>{escape(fig.name)}</b>: {escape(fig.caption)}</figcaption></figure>"
        for fig in figures
    )
    return parts


def _machine_table(machine: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in machine.items())
    heading = "<h2 id='machine'>Machine<a class='top' href='#dashboard'>↑ dashboard</a></h2>"
    return f"{heading}<table><tbody>{rows}</tbody></table>"


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width,initial-scale=1'>",
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
            *body,
            "</body></html>",
        ]
    )


def render_report(
    payload: dict[str, Any], figures: list[Figure], machine: dict[str, Any], bench_link: str | None = None
) -> str:
    """The report page for a ``results.json`` payload and its figures (``bench_link``: a bench.html to link)."""
    summary = payload["summary"]
    techniques = list(payload["techniques"])
    toc = " ".join(f"<a href='#{escape(t)}'>{escape(t)}</a>" for t in techniques) + " <a href='#machine'>machine</a>"
    if bench_link:
        toc += f" <a href='{escape(bench_link)}'>benchmarks</a>"
    parts = [
        "<h1 id='dashboard'>kexue reproduce</h1>",
        (
            f"<p class='meta'>kexue {escape(str(payload['kexue_version']))} · mode <b>{escape(payload['mode'])}</b> · "
            f"{escape(str(machine.get('date', '')))} · {escape(str(machine.get('processor', '')))} · "
            f"{machine.get('cpu_count')} cores · torch {escape(str(machine.get('torch', '')))}</p>"
        ),
        "<p class='summary'>" + "".join(f"<span class='{s}'>{summary.get(s, 0)} {s}</span>" for s in STATUSES) + "</p>",
        f"<nav class='toc'>Sections: {toc}</nav>",
        _dashboard(payload),
        (
            "<p class='meta'><b>pass</b>/<b>fail</b>: the article's statement checked against the tolerance shown. "
            "<b>documented</b>: a limitation the article itself admits, reported with its measured size. "
            "<b>skipped</b>: could not run here (its data or an optional extra is missing; the details say which), "
            "neither a pass nor a failure. Structured values are shown as tables under their claim; "
            "results.json keeps the raw values.</p>"
        ),
    ]
    for technique, info in payload["techniques"].items():
        claims = [c for c in payload["claims"] if c["technique"] == technique]
        parts.extend(_section(technique, info, claims, [f for f in figures if f.technique == technique]))
    if payload["not_implemented"]:
        parts.append(
            "<h2>Not yet implemented</h2><p>"
            + ", ".join(escape(t) for t in payload["not_implemented"])
            + " — these techniques have no claims in this version.</p>"
        )
    parts.append(_machine_table(machine))
    return _page(f"kexue reproduce — {payload['mode']}", parts)


def _ratio_badge(met: bool | None) -> str:
    css, word = {None: ("skipped", "reported"), True: ("pass", "met"), False: ("fail", "missed")}[met]
    return f"<span class='badge {css}'>{word}</span>"


def _ratio_bar(r: dict[str, Any]) -> str:
    """The value as a bar on a scale that fits the value and the target; the target is the black tick."""
    value, target = float(r["value"]), r["target"]
    scale = max(value, float(target or 0.0), 1e-300) * 1.15
    kind = "reported" if r["met"] is None else ("met" if r["met"] else "missed")
    tick = f"<i style='left:{100 * float(target) / scale:.1f}%'></i>" if target is not None else ""
    return f"<div class='bar'><span class='{kind}' style='width:{100 * value / scale:.1f}%'></span>{tick}</div>"


def render_bench(payload: dict[str, Any]) -> str:
    """``kexue bench``'s page for a ``bench.json`` payload.

    Args:
        payload: what :func:`kexue.report.outputs.bench_payload` built.

    Returns:
        The self-contained HTML page.
    """
    parts = [
        "<h1 id='dashboard'>kexue bench</h1>",
        *_bench_meta(payload),
        (
            "<nav class='toc'>Sections: <a href='#ratios'>ratios</a> <a href='#cases'>times</a> "
            "<a href='#machine'>machine</a></nav>"
        ),
        "<h2 id='ratios'>Ratios against their targets<a class='top' href='#dashboard'>↑ top</a></h2>",
        (
            "<p class='meta'>Each bar is the measured ratio; the black tick is the target. Green: met, red: missed, "
            "blue: reported without a target.</p>"
        ),
        "<table><thead><tr><th>ratio</th><th>value</th><th>target</th><th></th><th>meaning</th></tr></thead><tbody>",
    ]
    parts.extend(_ratio_row(r) for r in payload["ratios"])
    parts.append("</tbody></table>")
    parts.append(_cases_table(payload["cases"]))
    if payload.get("skipped"):
        rows = "".join(
            f"<tr><td><code>{escape(s['technique'])}.{escape(s['case'])}</code></td><td>{escape(s['reason'])}</td></tr>"
            for s in payload["skipped"]
        )
        parts.append(f"<h2 id='skipped'>Skipped cases</h2><table><tbody>{rows}</tbody></table>")
    parts.append(_machine_table(payload["machine"]))
    return _page("kexue bench", parts)


def _bench_meta(payload: dict[str, Any]) -> list[str]:
    """The machine line and the verdict counts under the bench page's title (two paragraphs)."""
    ratios, machine = payload["ratios"], payload["machine"]
    met = sum(r["met"] is True for r in ratios)
    missed = sum(r["met"] is False for r in ratios)
    machine_line = (
        f"<p class='meta'>{escape(str(machine.get('date', '')))} · {escape(str(machine.get('processor', '')))} · "
        f"device {escape(str(machine.get('device', '')))} · {'quick' if payload.get('quick') else 'full'} size</p>"
    )
    counts = (
        f"<p class='summary'><span class='pass'>{met} targets met</span><span class='fail'>{missed} missed</span>"
        f"<span class='skipped'>{len(ratios) - met - missed} reported</span>"
        f"<span class='documented'>{len(payload.get('skipped', []))} cases skipped</span></p>"
    )
    return [machine_line, counts]


def _ratio_row(r: dict[str, Any]) -> str:
    """One ratio's table row: id and verdict, value, target, bar, meaning."""
    target = (
        "—" if r["target"] is None else ("≥ " if r["higher_is_better"] else "≤ ") + format_value(float(r["target"]))
    )
    return (
        f"<tr><td><code>{escape(r['id'])}</code> {_ratio_badge(r['met'])}</td>"
        f"<td class='num'>{format_value(float(r['value']))}</td>"
        f"<td class='num'>{target}</td><td>{_ratio_bar(r)}</td><td>{escape(r.get('description', ''))}</td></tr>"
    )


def _cases_table(cases: list[dict[str, Any]]) -> str:
    """One row per case, every implementation's median time side by side (kexue, the peers, the floors)."""
    parts = [
        "<h2 id='cases'>Times (median of the repeats)<a class='top' href='#dashboard'>↑ top</a></h2>",
        (
            "<table><thead><tr><th>technique</th><th>case</th><th>implementation</th><th>median</th>"
            "<th>relative to the fastest</th><th>peak memory</th></tr></thead><tbody>"
        ),
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cases:
        groups.setdefault((c["technique"], c["case"]), []).append(c)
    for (technique, case), impls in groups.items():
        fastest = min(c["median_s"] for c in impls) or 1e-300
        for i, c in enumerate(impls):
            label = (
                f"<td rowspan='{len(impls)}'>{escape(technique)}</td><td rowspan='{len(impls)}'>{escape(case)}</td>"
                if i == 0
                else ""
            )
            peak = "—" if c.get("peak_bytes") is None else f"{c['peak_bytes'] / 2**20:,.1f} MiB"
            parts.append(
                f"<tr>{label}<td>{escape(c['impl'])}</td><td class='num'>{c['median_s'] * 1e3:,.3f} ms</td>"
                f"<td class='num'>{c['median_s'] / fastest:.2f}×</td><td class='num'>{peak}</td></tr>"
            )
    parts.append("</tbody></table>")
    return "".join(parts)
