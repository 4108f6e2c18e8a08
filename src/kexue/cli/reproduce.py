"""``kexue reproduce``: check the articles' claims, print a table, write results.json and report.html."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from kexue.cli._common import add_data_argument, add_technique_arguments
from kexue.report import registry

NAME = "reproduce"
HELP = "check every claim of the articles on local data; writes DIR/results.json and DIR/report.html"
EXAMPLE = "kexue reproduce orthogonal --out reports"


def configure(parser: argparse.ArgumentParser) -> None:
    add_technique_arguments(parser, "run")
    add_data_argument(parser)
    parser.add_argument("--full", action="store_true", help="full scale (default: quick scale)")
    parser.add_argument("--json", action="store_true", help="print results.json to stdout instead of the table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument(
        "--bench", metavar="DIR", help="link the report to DIR/bench.html (written by 'kexue bench --out DIR')"
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute cached intermediates (the STS sentence encodings) instead of reading them from the cache folder",
    )


def run(args: argparse.Namespace) -> int:
    from kexue.cli._common import apply_data_argument, claims_table, stderr_console, stdout_console
    from kexue.report.html import render_report
    from kexue.report.io import atomic_write, machine_info, prepare_out_dir, write_json
    from kexue.report.runner import run_claims

    techniques = registry.parse_techniques(args.techniques, registry.SUITES, "claims")
    apply_data_argument(args)
    bench = _bench_page(args.bench)
    out = prepare_out_dir(args.out)
    err = stderr_console()
    previous = os.environ.get("KEXUE_NO_CACHE")
    if args.no_cache:
        os.environ["KEXUE_NO_CACHE"] = "1"
    try:
        result = run_claims(
            techniques,
            "full" if args.full else "quick",
            console=err,
            seed=args.seed,
            debug=getattr(args, "debug", False),
        )
    finally:  # a caller of main() in the same process keeps its own setting
        if previous is None:
            os.environ.pop("KEXUE_NO_CACHE", None)
        else:
            os.environ["KEXUE_NO_CACHE"] = previous
    payload = result.to_json()
    machine = machine_info()
    write_json(out / "results.json", payload)
    link = None if bench is None else quote(Path(os.path.relpath(bench.resolve(), out.resolve())).as_posix())
    atomic_write(out / "report.html", render_report(payload, result.figures, machine, bench_link=link))

    if args.json:
        print(json.dumps(payload, indent=2, allow_nan=False))
    else:
        stdout_console().print(claims_table(payload["claims"]))
    s = payload["summary"]
    err.print(
        f"{s['pass']} pass, {s['fail']} fail, {s['documented']} documented, {s['skipped']} skipped "
        f"({payload['mode']} scale, {sum(result.seconds.values()):.1f} s)"
    )
    if result.skipped:
        print(f"kexue reproduce: {skipped_line(result.skipped)}", file=sys.stderr)
    if payload["not_implemented"]:
        err.print(f"not implemented yet: {', '.join(payload['not_implemented'])}")
    err.print(f"report: {(out / 'report.html').resolve()}  results: {(out / 'results.json').resolve()}")
    return 1 if result.failed else 0


def skipped_line(claims: list) -> str:
    """One line: how many checks were skipped, and each distinct reason with its count."""
    reasons = Counter(c.details for c in claims)
    listed = "; ".join(f"{reason}" + (f" (x{n})" if n > 1 else "") for reason, n in reasons.items())
    return f"{len(claims)} check(s) skipped, not failed: {listed}"


def _bench_page(folder: str | None) -> Path | None:
    """``folder/bench.html`` for ``--bench``, checked before any work is done."""
    if folder is None:
        return None
    page = Path(folder) / "bench.html"
    if not page.is_file():
        raise ValueError(f"--bench {folder}: no bench.html there; run 'kexue bench --out {folder}' first")
    return page
