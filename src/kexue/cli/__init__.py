"""The ``kexue`` command line.

Every module in this package whose name does not start with ``_`` is a subcommand. It
defines ``NAME`` (the command word), ``HELP`` (one line), ``EXAMPLE`` (a copy-pasteable
command line), ``configure(parser)`` and ``run(args) -> int``. New subcommands plug in by
adding a module; nothing here changes. Heavy imports belong inside ``run``, with a
``# start-up time`` comment: ``kexue --help`` imports every subcommand module.

Exit codes: 0 success; 1 a claim failed or a benchmark target was missed; 2 bad usage or
bad input, reported as one line on stderr (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from kexue import __version__
from kexue._optional import MissingExtra, as_missing_extra

__all__ = ["UsageError", "build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage or input; reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _subcommands() -> list[ModuleType]:
    return [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
        if not info.name.startswith("_")
    ]


def build_parser() -> argparse.ArgumentParser:
    """The ``kexue`` parser, with one subcommand per module of this package.

    Returns:
        The parser; a parsed command's ``run`` attribute is its module's ``run``.
    """
    parser = _Parser(
        prog="kexue",
        description=(
            "Techniques from Su Jianlin's Scientific Spaces articles: reproduce their claims, benchmark against peers."
        ),
        epilog="Run 'kexue COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"kexue {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _subcommands():
        sub = commands.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            epilog=f"example:\n  {module.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        module.configure(sub)
        sub.set_defaults(run=module.run)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kexue`` script.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 a failed claim or missed target (or an internal error), 2 bad usage or
        input, 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = next((a for a in argv if not a.startswith("-")), None)
    prefix = f"kexue {command}" if command else "kexue"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args.run(args))
    except KeyboardInterrupt:
        print("kexue: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, ImportError):  # a missing optional extra is the user's set-up, like bad input
            exc = as_missing_extra(exc, prefix) or exc
        if isinstance(exc, (UsageError, ValueError, TypeError, OSError, MissingExtra)):
            print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        # a bug, not bad input: still one line unless --debug
        print(
            f"kexue: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
