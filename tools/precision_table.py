"""Write docs/precision.md's contract table from the device/precision matrix (tests/*/device_cases.py).

Usage: ``.venv/bin/python tools/precision_table.py [--out docs/precision.md]`` (``make precision``).
Each row is one public entry point; each dtype column gives the largest error measured against the float64
reference over the CPU settings (built in the dtype or cast with ``.to()``; for float32, autocast off and
on in two columns, for the half dtypes both together) and, after the slash, the bound the tests hold it to.
The table sits between the two marker lines of the page, which this script rewrites in place (written to a
temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from device_contract import DTYPE_NAMES, LOW_DTYPES, Entry, evaluate, load_entries  # noqa: E402

BEGIN, END = "<!-- contract table: begin (tools/precision_table.py) -->", "<!-- contract table: end -->"


def _cell(entry: Entry, dtype: torch.dtype, autocast: tuple[bool, ...] = (False, True)) -> str:
    """The worst (error, bound) over the entry's CPU settings of ``dtype`` with autocast in ``autocast``."""
    if dtype not in entry.dtypes:
        return "refused"
    settings = [s for s in entry.settings(("cpu",)) if s.dtype == dtype and s.autocast in autocast]
    if not settings:
        return "n/a"
    worst = max((o.error, o.bound) for o in (evaluate(entry, s) for s in settings))
    return f"{worst[0]:.1e} / {worst[1]:.1e}"


def _dtype_cells(entry: Entry) -> list[str]:
    """float32 without autocast, float32 under CPU autocast (bfloat16), then the half dtypes (autocast on and off)."""
    return [
        _cell(entry, torch.float32, (False,)),
        _cell(entry, torch.float32, (True,)),
        *(_cell(entry, d) for d in LOW_DTYPES[1:]),
    ]


def _devices(entry: Entry) -> str:
    return ", ".join(d + ("¹" if d == "cuda" else "") for d in entry.devices)


def table(entries: list[Entry]) -> str:
    head = [
        "entry point",
        "accepts",
        "computes and accumulates in",
        "returns",
        "devices",
        "float32 error / bound",
        "float32 under autocast",
        *(DTYPE_NAMES[d] + " error / bound" for d in LOW_DTYPES[1:]),
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for entry in entries:
        cells = [f"`{entry.name}`", entry.accepts, entry.computes, entry.returns, _devices(entry), *_dtype_cells(entry)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def rewrite(page: Path, body: str) -> None:
    text = page.read_text(encoding="utf-8")
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + body + "\n" + text[stop:]
    fd, tmp = tempfile.mkstemp(dir=page.parent, prefix=".precision-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(new)
    os.replace(tmp, page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "precision.md")
    args = parser.parse_args()
    rewrite(args.out, table(load_entries()))
    print(f"wrote the contract table to {args.out}")


if __name__ == "__main__":
    main()
