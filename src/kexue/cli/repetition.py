"""``kexue repetition analyze|metrics``: the repetition measure of a corpus's bigram decoder per
decoding rule, and repetition metrics of generated text."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

NAME = "repetition"
HELP = "repetition measure R of a corpus's bigram model per decoding rule; repetition metrics of generations"
EXAMPLE = (
    "kexue repetition analyze ../shared/data/tinyshakespeare/input.txt --level char "
    "--decoding greedy,topk=40,topp=0.9,sample"
)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    an = sub.add_parser("analyze", help="R, its bounds and ζ per decoding rule, for the bigram model of CORPUS")
    an.add_argument("corpus", metavar="CORPUS", help="a text file")
    an.add_argument("--level", default="char", choices=("char", "word"), help="tokens: characters (default) or words")
    an.add_argument(
        "--decoding",
        default="greedy,topk=40,topp=0.9,sample",
        help="comma-separated rules: greedy, topk=K, topp=P, temperature=T, sample (default: %(default)s)",
    )
    an.add_argument(
        "--max-vocab",
        type=int,
        default=2000,
        help="keep the most frequent tokens, the rest become <unk> (default: 2000)",
    )
    an.add_argument("--alpha", type=float, default=0.0, help="add-alpha smoothing of the counts (default: 0)")
    an.add_argument("--json", action="store_true", help="print JSON instead of a table")
    me = sub.add_parser(
        "metrics", help="rep-n, seq-rep-4, distinct-n, rep/l, uniq and loops of GENERATIONS (one per line)"
    )
    me.add_argument("generations", metavar="GENERATIONS", help="a text file, one generated text per line")
    me.add_argument("--level", default="word", choices=("char", "word"), help="tokens: words (default) or characters")
    me.add_argument("--max-period", type=int, default=32, help="longest loop period looked for (default: 32)")
    me.add_argument(
        "--min-repeats", type=int, default=2, help="times a cycle is walked to count as a loop (default: 2)"
    )
    me.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for p in (an, me):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from kexue.cli._common import stdout_console  # start-up time

    console = stdout_console()
    if args.action == "metrics":
        return _metrics(args, console)
    return _analyze(args, console)


def _metrics(args: argparse.Namespace, console: Console) -> int:
    """``kexue repetition metrics``: the metrics of a file of generations, as a table or JSON."""
    from rich.table import Table  # start-up time

    from kexue._shared import check_int, read_text  # start-up time
    from kexue.repetition.metrics import summary  # start-up time
    from kexue.repetition.transition import tokenize  # start-up time
    from kexue.report.claims import json_value  # start-up time

    check_int("--max-period", args.max_period, 1)
    check_int("--min-repeats", args.min_repeats, 2)
    lines = [line for line in read_text(args.generations, "GENERATIONS file").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{args.generations}: no generations (one per line)")
    result = summary(
        [tokenize(line, level=args.level) for line in lines], max_period=args.max_period, min_repeats=args.min_repeats
    )
    if args.json:
        console.print_json(json.dumps(json_value(result), allow_nan=False))
        return 0
    table = Table("metric", "value", title=f"repetition metrics, {len(lines)} generations ({args.level} tokens)")
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    return 0


def _analyze(args: argparse.Namespace, console: Console) -> int:
    """``kexue repetition analyze``: R, bounds and ζ per rule for a corpus's bigram model."""
    from rich.table import Table  # start-up time

    from kexue._shared import check_int, read_text  # start-up time
    from kexue.repetition.analysis import analyze  # start-up time
    from kexue.repetition.transition import Vocabulary, parse_decodings, tokenize, transition_matrix  # start-up time
    from kexue.report.claims import json_value  # start-up time

    check_int("--max-vocab", args.max_vocab, 2)
    rules = parse_decodings(args.decoding)
    tokens = tokenize(read_text(args.corpus, "CORPUS file"), level=args.level)
    if len(tokens) < 2:
        raise ValueError(f"{args.corpus}: fewer than two tokens")
    vocab = Vocabulary.build(tokens, max_size=args.max_vocab)
    P = transition_matrix(vocab.encode(tokens), len(vocab), alpha=args.alpha)
    rows = analyze(P, rules)
    if args.json:
        payload = {
            "corpus": args.corpus,
            "level": args.level,
            "vocabulary": len(vocab),
            "tokens": len(tokens),
            "rules": [vars(r) for r in rows],
        }
        console.print_json(json.dumps(json_value(payload), allow_nan=False))  # strict JSON: ∞ is "inf"
        return 0
    table = Table(
        "decoding",
        "R",
        "λ₁",
        "ζ",
        "lower (proven)",
        "article's estimate",
        "upper nλ₁/(1−λ₁)",
        title=f"{args.corpus}: bigram model, {len(vocab)} {args.level} tokens",
    )
    for r in rows:
        table.add_row(
            r.rule,
            f"{r.r:.6g}" + (f" ± {r.r_stderr:.2g}" if r.r_stderr else ""),
            f"{r.lambda1:.4f}",
            f"{r.zeta:.4g}",
            f"{r.lower:.4g}",
            f"{r.article_estimate:.4g}",
            f"{r.upper:.4g}",
        )
    console.print(table)
    for note in dict.fromkeys(f"{r.rule}: {r.note}" for r in rows if r.note):
        console.print(note, highlight=False)
    return 0
