"""``kexue grow``: write a wider and/or deeper checkpoint that computes the same function."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kexue.cli._common import stderr_console, stdout_console

NAME = "grow"
HELP = "grow a HuggingFace checkpoint (width by k, depth by identity blocks) losslessly; writes OUT and a parity report"
EXAMPLE = "kexue grow path/to/small -o path/to/large --width 2 --depth 2"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``kexue grow``'s arguments.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="a HuggingFace checkpoint folder (config.json + weights)"
    )
    parser.add_argument(
        "-o", "--out", required=True, metavar="OUT_DIR", help="folder for the grown checkpoint (must not exist)"
    )
    parser.add_argument(
        "--width", type=int, default=1, help="hidden/feed-forward width factor k (default: 1, unchanged)"
    )
    parser.add_argument(
        "--mode",
        default="heads",
        choices=("heads", "head_dim"),
        help="heads: copy heads, keep head_dim (exact with RoPE; default); head_dim: the article's wider heads",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=1,
        help="depth factor: insert depth-1 identity blocks after every layer (default: 1)",
    )
    parser.add_argument(
        "--ffn",
        type=int,
        default=None,
        metavar="SIZE",
        help="feed-forward width of the result (after --width), any size >= the current one (default: unchanged)",
    )
    parser.add_argument(
        "--experts",
        type=int,
        default=1,
        help="mixture-of-experts models: copy every expert this many times, as many more experts per token "
        "(default: 1)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="symmetry breaking: zero-sum noise, relative std (keeps the function; e.g. 1.0; default 0: exact copies)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the grown size (planned on the meta device from config.json alone) and write nothing",
    )


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def describe_plan(planned: dict[str, Any]) -> str:
    """One line: the parameter counts before and after, and the grown size per dtype.

    Args:
        planned: the ``planned`` entry of :func:`kexue.growth.checkpoint.grow_checkpoint`'s report.

    Returns:
        The line.
    """
    small, large = planned["small"], planned["large"]
    dtypes = ", ".join(f"{name} {_bytes(d['bytes'])}" for name, d in large["dtypes"].items())
    return (
        f"planned: {small['parameters']:,} -> {large['parameters']:,} parameters, "
        f"{_bytes(small['bytes'])} -> {_bytes(large['bytes'])} ({dtypes})"
    )


# the library's argument names as the CLI's options, at the start of an error message
_OPTION_NAMES = (
    ("src ", "MODEL_DIR "),
    ("dst ", "--out "),
    ("width=", "--width="),
    ("depth=", "--depth="),
    ("ffn=", "--ffn="),
    ("experts=", "--experts="),
    ("noise=", "--noise="),
)


def _in_cli_terms(exc: ValueError | FileNotFoundError | FileExistsError) -> ValueError | OSError:
    """``exc`` again, its message naming the CLI's options instead of the function's arguments."""
    message = str(exc)
    for name, option in _OPTION_NAMES:
        if message.startswith(name):
            message = option + message[len(name) :]
    return type(exc)(
        message.replace(
            "give width >= 2, depth >= 2, experts >= 2 and/or ffn",
            "give --width >= 2, --depth >= 2, --experts >= 2 and/or --ffn SIZE",
        )
    )


def run(args: argparse.Namespace) -> int:
    """Grow the checkpoint (or only plan it, with ``--dry-run``) and print the parity report as JSON.

    Args:
        args: the parsed command line.

    Returns:
        The exit code: 0 when the grown model matches in float64 (max |diff| <= 1e-8), else 1.
    """
    # start-up time (and the nlp extra): growth loads transformers
    from kexue.growth.checkpoint import grow_checkpoint

    if not args.noise >= 0 or args.noise == float("inf"):
        raise ValueError(f"--noise {args.noise} must be a finite number >= 0")
    options: dict[str, Any] = dict(
        width=args.width,
        depth=args.depth,
        ffn=args.ffn,
        experts=args.experts,
        mode=args.mode,
        noise=args.noise,
        seed=args.seed,
    )
    try:
        if args.dry_run:
            planned = grow_checkpoint(args.model_dir, args.out, **options, dry_run=True)["planned"]
            stderr_console().print(describe_plan(planned))
            stdout_console().print_json(json.dumps({"planned": planned}))
            return 0
        # the plan is printed once the checkpoint has loaded (so a bad checkpoint gives one error line), before writing
        report = grow_checkpoint(
            args.model_dir, args.out, **options, on_plan=lambda planned: stderr_console().print(describe_plan(planned))
        )
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise _in_cli_terms(exc) from None
    stdout_console().print_json(json.dumps(report))
    stderr_console().print(
        f"wrote {args.out} ({report['parameters']['small']:,} -> {report['parameters']['large']:,} parameters)"
    )
    return 0 if report["float64"]["max_abs"] <= 1e-8 else 1
