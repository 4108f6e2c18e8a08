"""``kexue reproduce``: check the articles' claims, print a table, write results.json and report.html."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from kexue.cli._common import (
    add_data_argument,
    add_technique_arguments,
    apply_data_argument,
    claims_table,
    stderr_console,
    stdout_console,
)
from kexue.report import registry

if TYPE_CHECKING:
    from kexue.report.claims import Claim

NAME = "reproduce"
HELP = "check every claim of the articles on local data; writes DIR/results.json and DIR/report.html"
EXAMPLE = "kexue reproduce orthogonal --out reports"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``kexue reproduce``'s arguments.

    Args:
        parser: the subcommand's parser.
    """
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
        help="recompute cached intermediates (the STS sentence encodings) instead of reading them from the "
        "cache folder",
    )


def run(args: argparse.Namespace) -> int:
    """Run the claims, write ``results.json`` and ``report.html``, print the table and the summary.

    Args:
        args: the parsed command line.

    Returns:
        The exit code: 1 when a claim failed, else 0.
    """
    from kexue.report.io import prepare_out_dir  # start-up time: torch and rich load when the command runs
    from kexue.report.outputs import write_reproduce  # start-up time
    from kexue.report.runner import run_claims  # start-up time

    techniques = registry.parse_techniques(args.techniques, registry.SUITES, "claims")
    apply_data_argument(args)
    bench = _bench_page(args.bench)
    out = prepare_out_dir(args.out)
    err = stderr_console()
    with _no_cache(args.no_cache):
        result = run_claims(
            techniques,
            mode="full" if args.full else "quick",
            console=err,
            seed=args.seed,
            debug=getattr(args, "debug", False),
        )
    payload = write_reproduce(out, result, bench_page=bench)
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


@contextmanager
def _no_cache(enabled: bool) -> Iterator[None]:
    """Set ``KEXUE_NO_CACHE=1`` for the block when ``enabled``; a caller of main() in the same process keeps its own
    setting afterwards."""
    previous = os.environ.get("KEXUE_NO_CACHE")
    if enabled:
        os.environ["KEXUE_NO_CACHE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KEXUE_NO_CACHE", None)
        else:
            os.environ["KEXUE_NO_CACHE"] = previous


def skipped_line(claims: Sequence[Claim]) -> str:
    """One line: how many checks were skipped, and each distinct reason with its count.

    Args:
        claims: the skipped claims.

    Returns:
        The line.
    """
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
