"""``kexue bench``: kexue side by side with the peers each technique names; writes DIR/bench.json."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from kexue.cli._common import (
    add_data_argument,
    add_technique_arguments,
    apply_data_argument,
    stderr_console,
    stdout_console,
)
from kexue.report import registry

if TYPE_CHECKING:
    from rich.table import Table

    from kexue.report.bench import Bench

NAME = "bench"
HELP = "run the side-by-side benchmarks against the peers; writes DIR/bench.json and DIR/bench.html"
EXAMPLE = "kexue bench orthogonal --quick --out reports"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``kexue bench``'s arguments.

    Args:
        parser: the subcommand's parser.
    """
    add_technique_arguments(parser, "benchmark")
    add_data_argument(parser)
    parser.add_argument("--quick", action="store_true", help="smaller inputs (about a tenth), for a fast look")
    parser.add_argument("--device", default="cpu", help="torch device to run on: cpu (default), cuda, cuda:N")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per case; the median is reported (default: 5)"
    )
    parser.add_argument("--json", action="store_true", help="print bench.json to stdout instead of the tables")


def _check_device(device: str) -> str:
    import torch  # start-up time: `kexue --help` must not import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; accepted: cpu, cuda, cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r} is not supported; accepted: cpu, cuda, cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    return str(parsed)


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks, write ``bench.json`` and ``bench.html``, print the tables.

    Args:
        args: the parsed command line.

    Returns:
        The exit code: 1 when a target was missed, else 0.
    """
    from kexue.report.io import prepare_out_dir  # start-up time: torch and rich load when the command runs
    from kexue.report.outputs import write_bench  # start-up time
    from kexue.report.runner import run_benchmarks  # start-up time

    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats} must be at least 1")
    techniques = registry.parse_techniques(args.techniques, registry.BENCHMARKS, "benchmarks")
    device = _check_device(args.device)
    apply_data_argument(args)
    out = prepare_out_dir(args.out)
    err = stderr_console()
    benches = run_benchmarks(techniques, quick=args.quick, device=device, repeats=args.repeats, console=err)
    payload = write_bench(out, benches, device=device, quick=args.quick)
    if args.json:
        print(json.dumps(payload, indent=2, allow_nan=False))
    else:
        console = stdout_console()
        console.print(_cases_table(benches))
        console.print(_ratios_table(benches))
    missed = [r.id for b in benches for r in b.ratios if r.met is False]
    for s in payload["skipped"]:
        print(f"kexue bench: skipped {s['technique']}.{s['case']}: {s['reason']}", file=sys.stderr)
    if missed:
        err.print(f"[bold red]targets missed:[/] {', '.join(missed)}")
    err.print(f"bench: {(out / 'bench.html').resolve()}  data: {(out / 'bench.json').resolve()}")
    return 1 if missed else 0


def _cases_table(benches: list[Bench]) -> Table:
    """Every case's median time and peak memory, one row per implementation."""
    from rich.table import Table  # start-up time

    cases = Table(title="kexue bench: cases")
    for column in ("technique", "case", "impl", "median", "peak memory"):
        cases.add_column(column, justify="right" if column in ("median", "peak memory") else "left")
    for c in (c for b in benches for c in b.cases):
        peak = "—" if c.peak_bytes is None else f"{c.peak_bytes / 2**20:,.1f} MiB"
        cases.add_row(c.technique, c.case, c.impl, f"{c.median_s * 1e3:,.2f} ms", peak)
    return cases


def _ratios_table(benches: list[Bench]) -> Table:
    """Every ratio with its target and verdict."""
    from rich.table import Table  # start-up time

    ratios = Table(title="kexue bench: ratios")
    for column in ("ratio", "value", "target", "met", "meaning"):
        ratios.add_column(column)
    for r in (r for b in benches for r in b.ratios):
        target = "reported" if r.target is None else ("≥ " if r.higher_is_better else "≤ ") + f"{r.target:g}"
        met = "—" if r.met is None else ("[bold green]yes[/]" if r.met else "[bold red]NO[/]")
        ratios.add_row(r.id, f"{r.value:.2f}", target, met, r.description)
    return ratios
