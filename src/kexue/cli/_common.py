"""What the subcommands share: common arguments, rich consoles and tables.

Imported by ``kexue --help``: nothing here imports torch, rich or a technique at module level.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kexue.report import registry
from kexue.report.html import format_value

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "STATUS_STYLE",
    "add_data_argument",
    "add_technique_arguments",
    "apply_data_argument",
    "claims_table",
    "stderr_console",
    "stdout_console",
]

STATUS_STYLE: dict[str, str] = {
    "pass": "bold green",
    "fail": "bold red",
    "documented": "bold yellow",
    "skipped": "bold blue",
}


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data DIR``: the data folder, ahead of ``$KEXUE_DATA`` and ``../shared/data``, ``./shared/data``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument(
        "--data", metavar="DIR", help="the data folder (default: $KEXUE_DATA, else ../shared/data, else ./shared/data)"
    )


def apply_data_argument(args: argparse.Namespace) -> None:
    """Check ``--data`` and make it the data folder of this process and the ones it starts (``KEXUE_DATA``).

    Args:
        args: the parsed command line.

    Raises:
        ValueError: ``--data`` is not a folder.
    """
    if getattr(args, "data", None) is None:
        return
    folder = Path(args.data).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"--data {args.data}: no such folder; give the folder holding stsbenchmark/, sts12-16/, sick/, "
            "tinyshakespeare/"
        )
    os.environ["KEXUE_DATA"] = str(folder.resolve())


def add_technique_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The positional TECHNIQUE list and ``--out DIR`` that every technique-wide command takes.

    Args:
        parser: the subcommand's parser.
        verb: what the command does to the techniques (for the help text).
    """
    parser.add_argument(
        "techniques",
        nargs="*",
        metavar="TECHNIQUE",
        help=f"techniques to {verb} (default: all implemented); names: {', '.join(registry.TECHNIQUES)}",
    )
    parser.add_argument("--out", default="reports", metavar="DIR", help="output directory (default: reports/)")


def stdout_console() -> Console:
    """A console for results; wide enough not to wrap tables when output is redirected.

    Returns:
        The console (on stdout).
    """
    from rich.console import Console  # start-up time: `kexue --help` must not import rich

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160))
    return Console(width=width, highlight=False)


def stderr_console() -> Console:
    """A console for progress bars and notes, so stdout stays clean for ``--json``.

    Returns:
        The console (on stderr).
    """
    from rich.console import Console  # start-up time: `kexue --help` must not import rich

    return Console(stderr=True, highlight=False, soft_wrap=True)


def claims_table(claims: list[dict[str, Any]]) -> Table:
    """The terminal table of ``kexue reproduce``: one row per claim.

    Args:
        claims: the claims as JSON (``results.json``'s ``claims``).

    Returns:
        The rich table.
    """
    from rich.table import Table  # start-up time: `kexue --help` must not import rich

    table = Table(title="kexue reproduce", show_lines=False)
    for column in ("technique", "claim", "article's value", "measured", "verdict"):
        table.add_column(column, overflow="fold")
    for c in claims:
        name = c["id"].removeprefix(c["technique"] + ".")
        measured = c["details"] if c["status"] == "skipped" else format_value(c["measured"])
        table.add_row(
            c["technique"],
            name,
            format_value(c["article_value"]),
            measured,
            f"[{STATUS_STYLE[c['status']]}]{c['status']}[/]",
        )
    return table
