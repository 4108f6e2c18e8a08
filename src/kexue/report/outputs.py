"""Write what ``kexue reproduce`` and ``kexue bench`` produce: the JSON data and the HTML page beside it.

Each writer builds the payload, writes both files atomically into a prepared output folder
(:func:`kexue.report.io.prepare_out_dir`) and returns the payload, so a script can run the
suites (:mod:`kexue.report.runner`) and publish them as the CLI does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kexue.report.bench import Bench
from kexue.report.html import render_bench, render_report
from kexue.report.io import atomic_write, machine_info, write_json
from kexue.report.runner import ReproduceResult

__all__ = ["bench_payload", "relative_link", "write_bench", "write_reproduce"]


def bench_payload(benches: list[Bench], *, device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """The ``bench.json`` payload of a benchmark run.

    Args:
        benches: what :func:`kexue.report.runner.run_benchmarks` returned.
        device: the torch device the run used.
        quick: whether the run used the smaller inputs.

    Returns:
        ``machine``, ``quick``, ``cases``, ``ratios`` and ``skipped``, JSON-able.
    """
    return {
        "machine": machine_info(device=device),
        "quick": quick,
        "cases": [c.to_json() for b in benches for c in b.cases],
        "ratios": [r.to_json() for b in benches for r in b.ratios],
        "skipped": [s for b in benches for s in b.skipped],
    }


def write_bench(out: Path, benches: list[Bench], *, device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Write ``out/bench.json`` and ``out/bench.html`` for a benchmark run.

    Args:
        out: the output folder (existing and writable).
        benches: what :func:`kexue.report.runner.run_benchmarks` returned.
        device: the torch device the run used.
        quick: whether the run used the smaller inputs.

    Returns:
        The payload written to ``bench.json`` (see :func:`bench_payload`).
    """
    payload = bench_payload(benches, device=device, quick=quick)
    write_json(out / "bench.json", payload)
    atomic_write(out / "bench.html", render_bench(payload))
    return payload


def relative_link(page: Path, out: Path) -> str:
    """A URL from a page in ``out`` to ``page`` (relative, so the folders can move together).

    Args:
        page: the page to link to.
        out: the folder of the page that links.

    Returns:
        The relative, URL-quoted path.

    Example:
        >>> relative_link(Path("/r/bench one/bench.html"), Path("/r/claims"))
        '../bench%20one/bench.html'
    """
    return quote(Path(os.path.relpath(page.resolve(), out.resolve())).as_posix())


def write_reproduce(out: Path, result: ReproduceResult, *, bench_page: Path | None = None) -> dict[str, Any]:
    """Write ``out/results.json`` and ``out/report.html`` for a run of the claims.

    Args:
        out: the output folder (existing and writable).
        result: what :func:`kexue.report.runner.run_claims` returned.
        bench_page: a ``bench.html`` for the report to link to.

    Returns:
        The payload written to ``results.json`` (:meth:`ReproduceResult.to_json`).
    """
    payload = result.to_json()
    machine = machine_info()
    write_json(out / "results.json", payload)
    link = None if bench_page is None else relative_link(bench_page, out)
    atomic_write(out / "report.html", render_report(payload, result.figures, machine, bench_link=link))
    return payload
