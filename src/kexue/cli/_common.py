"""What the subcommands share: common arguments, rich consoles and tables."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.table import Table

from kexue.report import registry
from kexue.report.html import format_value

__all__ = ["STATUS_STYLE", "add_technique_arguments", "claims_table", "stderr_console", "stdout_console"]

STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "documented": "bold yellow"}


def add_technique_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The positional TECHNIQUE list and ``--out DIR`` that every technique-wide command takes."""
    parser.add_argument("techniques", nargs="*", metavar="TECHNIQUE",
                        help=f"techniques to {verb} (default: all implemented); names: {', '.join(registry.TECHNIQUES)}")
    parser.add_argument("--out", default="reports", metavar="DIR", help="output directory (default: reports/)")


def stdout_console() -> Console:
    """A console for results; wide enough not to wrap tables when output is redirected."""
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160))
    return Console(width=width, highlight=False)


def stderr_console() -> Console:
    """A console for progress bars and notes, so stdout stays clean for ``--json``."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def claims_table(claims: list[dict]) -> Table:
    table = Table(title="kexue reproduce", show_lines=False)
    for column in ("technique", "claim", "article's value", "measured", "verdict"):
        table.add_column(column, overflow="fold")
    for c in claims:
        name = c["id"].removeprefix(c["technique"] + ".")
        table.add_row(c["technique"], name, format_value(c["article_value"]), format_value(c["measured"]),
                      f"[{STATUS_STYLE[c['status']]}]{c['status']}[/]")
    return table
