"""``kexue whiten fit|eval``: fit sentence-embedding whitening on a corpus; evaluate on STS."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

from kexue.cli._common import add_data_argument, apply_data_argument, stderr_console, stdout_console

if TYPE_CHECKING:
    import numpy as np
    from rich.progress import Progress
    from rich.table import Table

    from kexue.data import SentencePairs, StsTask
    from kexue.sts import Encoder, TaskScores

NAME = "whiten"
HELP = "fit whitening on a corpus (streaming) and evaluate encoders, with or without it, on the STS suite"
EXAMPLE = (
    "kexue whiten fit --corpus sentences.txt -k 256 -o w.safetensors && kexue whiten eval --whitening w.safetensors"
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``kexue whiten``'s actions and their arguments.

    Args:
        parser: the subcommand's parser.
    """
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    fit = sub.add_parser("fit", help="fit on a text file, one sentence per line")
    fit.add_argument("--corpus", required=True, metavar="FILE", help="one sentence per line")
    fit.add_argument("-k", "--n-components", type=int, default=None, help="output dimensions (default: all)")
    fit.add_argument("--beta", type=float, default=1.0, help="fraction of the mean removed (default: 1)")
    fit.add_argument(
        "--gamma", type=float, default=1.0, help="rescaling power: 1 whitening, 0 rotation only (default: 1)"
    )
    fit.add_argument(
        "--shrinkage", type=float, default=0.0, help="covariance shrinkage towards a multiple of I, in [0, 1]"
    )
    fit.add_argument("-o", "--out", required=True, metavar="FILE", help="output .safetensors file")
    ev = sub.add_parser("eval", help="Spearman x100 on STS12-16, STS-B test and SICK-R")
    ev.add_argument(
        "--whitening", metavar="FILE", help="a file written by 'kexue whiten fit' (default: none, the raw vectors)"
    )
    ev.add_argument(
        "--tasks",
        default="all",
        help="comma-separated subset of STS12,STS13,STS14,STS15,STS16,STS-B,SICK-R (default: all)",
    )
    ev.add_argument("--json", action="store_true", help="print the scores as JSON")
    for p in (fit, ev):
        p.add_argument("--model", metavar="DIR", help="encoder folder (default: the embedded all-MiniLM-L6-v2)")
        p.add_argument(
            "--pooling",
            default="model",
            help="model (the sentence-transformers pipeline; default), cls, last-avg, first-last-avg or layers:i,j",
        )
        p.add_argument(
            "--batch-size",
            type=int,
            default=128,
            help="at most this many sentences per forward (default: 128); batches also stop at 4,096 tokens, "
            "padding included",
        )
        add_data_argument(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def _encoder(args: argparse.Namespace) -> Encoder:
    """``sentences -> (n, D) float32`` for the chosen model and pooling."""
    from kexue.data import embedded_model_path, load_sentence_transformer  # start-up time (nlp extra)

    model_dir = args.model or str(embedded_model_path())
    if args.pooling == "model":
        model = load_sentence_transformer(model_dir)
        return lambda sentences: model.encode(
            list(sentences), batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
    from kexue.whitening.pooling import encode_poolings, parse_pooling  # start-up time (nlp extra)

    parse_pooling(args.pooling)
    return lambda sentences: encode_poolings(model_dir, sentences, poolings=[args.pooling], batch_size=args.batch_size)[
        args.pooling
    ]


def _progress() -> Progress:
    # start-up time: `kexue --help` must not import rich
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )


def run(args: argparse.Namespace) -> int:
    """``kexue whiten fit`` or ``kexue whiten eval``.

    Args:
        args: the parsed command line.

    Returns:
        The exit code (0).
    """
    from kexue._shared import check_int  # start-up time: `kexue --help` must not import torch

    check_int("--batch-size", args.batch_size, 1)
    apply_data_argument(args)
    return _fit(args) if args.action == "fit" else _eval(args)


def _fit(args: argparse.Namespace) -> int:
    from kexue.contrastive.train import read_sentences  # start-up time (nlp extra)
    from kexue.whitening import Whitening  # start-up time (sklearn extra)

    if not Path(args.out).parent.exists():
        raise FileNotFoundError(f"--out {args.out}: folder {Path(args.out).parent} does not exist")
    sentences = read_sentences(args.corpus)
    w = Whitening(n_components=args.n_components, beta=args.beta, gamma=args.gamma, shrinkage=args.shrinkage)
    w._check_params()
    encode = _encoder(args)
    chunk = 4096
    with _progress() as bar:
        task = bar.add_task("encode + fit", total=len(sentences))
        for start in range(0, len(sentences), chunk):
            part = sentences[start : start + chunk]
            w.partial_fit(encode(part))
            bar.advance(task, len(part))
    w.save(
        args.out,
        info={"model": args.model or "embedded all-MiniLM-L6-v2", "pooling": args.pooling, "corpus": str(args.corpus)},
    )
    stderr_console().print(
        f"fitted on {w.n_samples_seen_} sentences, {w.n_features_in_} -> {w.n_components_} dimensions; wrote {args.out}"
    )
    return 0


def _task_names(tasks: str) -> list[StsTask]:
    """The ``--tasks`` list, checked against the STS tasks."""
    from kexue.data import STS_TASKS  # start-up time: `kexue --help` must not import torch

    names = list(STS_TASKS) if tasks == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    for name in names:
        if name not in STS_TASKS:
            raise ValueError(f"--tasks: unknown task {name!r}; choose from {', '.join(STS_TASKS)}")
    return [cast("StsTask", name) for name in names]


def _encode_all(encode: Encoder, sentences: list[str]) -> np.ndarray:
    """Every sentence's vector (float64), encoded in chunks under a progress bar."""
    import numpy as np  # start-up time: `kexue --help` must not import numpy

    parts = []
    with _progress() as bar:
        task = bar.add_task("encode", total=len(sentences))
        for start in range(0, len(sentences), 2048):
            parts.append(encode(sentences[start : start + 2048]))
            bar.advance(task, len(parts[-1]))
    return np.concatenate(parts).astype(np.float64)


def _eval(args: argparse.Namespace) -> int:
    from kexue.data import load_task  # start-up time: `kexue --help` must not import torch
    from kexue.sts import score_tasks, unique_sentences  # start-up time
    from kexue.whitening import Whitening  # start-up time (sklearn extra)

    names = _task_names(args.tasks)
    w = Whitening.load(args.whitening) if args.whitening else None
    if w is not None and w.info_.get("pooling", args.pooling) != args.pooling:
        stderr_console().print(
            f"note: {args.whitening} was fitted with --pooling {w.info_['pooling']}, evaluating with {args.pooling}"
        )
    tasks: dict[str, list[SentencePairs]] = {t: load_task(t, args.data) for t in names}
    sentences = unique_sentences(tasks)
    vectors = _encode_all(_encoder(args), sentences)
    if w is not None:
        vectors = w.transform(vectors)
    scores = score_tasks(tasks, vectors, {s: i for i, s in enumerate(sentences)})
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    stdout_console().print(_scores_table(scores, whitened=w is not None, pooling=args.pooling))
    return 0


def _scores_table(scores: dict[str, TaskScores], *, whitened: bool, pooling: str) -> Table:
    """One row per task (pooled and weighted-mean Spearman x100, pairs) and their average."""
    import numpy as np  # start-up time: `kexue --help` must not import numpy
    from rich.table import Table  # start-up time: `kexue --help` must not import rich

    table = Table(title=f"STS Spearman x100 ({'whitened' if whitened else 'raw'}, pooling {pooling})")
    for col in ("task", "all", "wmean", "pairs"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for name, s in scores.items():
        table.add_row(name, f"{s['all']:.2f}", f"{s['wmean']:.2f}", str(s["pairs"]))
    avg = {agg: float(np.mean([s[agg] for s in scores.values()])) for agg in ("all", "wmean")}
    table.add_row("average", f"{avg['all']:.2f}", f"{avg['wmean']:.2f}", "")
    return table
