"""A self-contained HTML report: inline CSS, figures embedded as PNG data URIs, no scripts.

Opens offline in any browser; nothing is fetched.
"""

from __future__ import annotations

from html import escape
from typing import Any

from kexue.report.claims import Figure

__all__ = ["format_value", "render_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,'Noto Sans CJK SC','PingFang SC','Microsoft YaHei',sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:2px solid #e5e5ea;padding-bottom:.3rem}
.meta{color:#6e6e73;font-size:.9rem}
.summary span{display:inline-block;margin-right:.6rem;padding:.2rem .7rem;border-radius:1rem;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.88rem;margin:.8rem 0}
table.claims{table-layout:fixed}
table.claims col.c1{width:25%}table.claims col.c2{width:31%}table.claims col.c3{width:14%}table.claims col.c4{width:12%}table.claims col.c5{width:8%}table.claims col.c6{width:10%}
th,td{border-bottom:1px solid #e5e5ea;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f7} td{overflow-wrap:anywhere} td.num{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em}
.pass{background:#e3f9e5;color:#1b7a2b}.fail{background:#fde8e8;color:#b42318}.documented{background:#fff4d6;color:#8a5a00}.skipped{background:#e8f0fd;color:#1a4fa0}
.badge{padding:.1rem .5rem;border-radius:.6rem;font-weight:600;font-size:.8rem;white-space:nowrap}
figure{margin:1rem 0;display:inline-block;max-width:100%} figure img{max-width:100%;border:1px solid #e5e5ea}
figcaption{color:#6e6e73;font-size:.85rem;max-width:900px}
details{font-size:.8rem;color:#6e6e73}
"""


def format_value(value: Any) -> str:
    """A compact human form of a measured or article value."""
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
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def render_report(payload: dict[str, Any], figures: list[Figure], machine: dict[str, Any]) -> str:
    """The report page for a ``results.json`` payload and its figures."""
    summary = payload["summary"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>kexue reproduce — {escape(payload['mode'])}</title><style>{_CSS}</style></head><body>",
        "<h1>kexue reproduce</h1>",
        f"<p class='meta'>kexue {escape(str(payload['kexue_version']))} · mode <b>{escape(payload['mode'])}</b> · "
        f"{escape(str(machine.get('date', '')))} · {escape(str(machine.get('processor', '')))} · "
        f"{machine.get('cpu_count')} cores · torch {escape(str(machine.get('torch', '')))}</p>",
        "<p class='summary'>"
        + "".join(f"<span class='{s}'>{summary.get(s, 0)} {s}</span>" for s in ("pass", "fail", "documented", "skipped"))
        + "</p>",
        "<p class='meta'><b>pass</b>/<b>fail</b>: the article's statement checked against the tolerance shown. "
        "<b>documented</b>: a limitation the article itself admits, reported with its measured size. "
        "<b>skipped</b>: could not run here (its data or an optional extra is missing; the details say which), "
        "neither a pass nor a failure.</p>",
    ]
    for technique, info in payload["techniques"].items():
        claims = [c for c in payload["claims"] if c["technique"] == technique]
        parts.append(f"<h2 id='{escape(technique)}'>{escape(technique)}</h2>")
        title = escape(info["title"])
        article = f"<a href='{escape(info['url'])}'>{title}</a>" if info["url"] else title
        parts.append(f"<p class='meta'>Article: {article} · {len(claims)} claims in {info['seconds']:.1f} s</p>")
        parts.append(
            "<table class='claims'><colgroup>" + "".join(f"<col class='c{i}'>" for i in range(1, 7)) + "</colgroup>"
            "<thead><tr><th>claim</th><th>statement</th><th>article</th><th>measured</th>"
            "<th>tolerance</th><th>verdict</th></tr></thead><tbody>"
        )
        for c in claims:
            details = f"<details><summary>details</summary><pre>{escape(c['details'])}</pre></details>" if c["details"] else ""
            parts.append(
                f"<tr><td><code>{escape(c['id']).replace('.', '.<wbr>')}</code></td><td>{escape(c['statement'])}{details}</td>"
                f"<td>{escape(format_value(c['article_value']))}</td>"
                f"<td class='num'>{escape(format_value(c['measured']))}</td>"
                f"<td class='num'>{escape(format_value(c['tolerance']))}</td>"
                f"<td><span class='badge {c['status']}'>{c['status']}</span></td></tr>"
            )
        parts.append("</tbody></table>")
        for fig in (f for f in figures if f.technique == technique):
            parts.append(
                f"<figure><img alt='{escape(fig.name)}' src='{fig.data_uri()}'>"
                f"<figcaption><b>{escape(fig.name)}</b>: {escape(fig.caption)}</figcaption></figure>"
            )
    if payload["not_implemented"]:
        parts.append(
            "<h2>Not yet implemented</h2><p>"
            + ", ".join(escape(t) for t in payload["not_implemented"])
            + " — these techniques have no claims in this version.</p>"
        )
    parts.append("<h2>Machine</h2><table><tbody>")
    parts.extend(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in machine.items())
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts)
