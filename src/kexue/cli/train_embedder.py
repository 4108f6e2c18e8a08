"""``kexue train-embedder``: fine-tune a sentence encoder with exact large-batch contrastive gradients."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kexue.cli._common import add_data_argument, apply_data_argument, stderr_console, stdout_console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from kexue.contrastive.train import TrainConfig, TrainResult

NAME = "train-embedder"
HELP = (
    "fine-tune a sentence-transformers model with the cached (exact large-batch) contrastive procedure: "
    "SimCSE from a text file or supervised pairs from a TSV; STS-B before/after"
)
EXAMPLE = "kexue train-embedder --pairs pairs.tsv --batch-size 256 --micro-batch-size 32 -o runs/minilm"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``kexue train-embedder``'s arguments.

    Args:
        parser: the subcommand's parser.
    """
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--sentences", metavar="FILE", help="one sentence per line: unsupervised SimCSE (two dropout views)"
    )
    data.add_argument("--pairs", metavar="TSV", help="anchor<TAB>positive per line: supervised, in-batch negatives")
    parser.add_argument(
        "--model", metavar="DIR", help="sentence-transformers model folder (default: the embedded all-MiniLM-L6-v2)"
    )
    parser.add_argument(
        "-o", "--out", required=True, metavar="DIR", help="output folder: model/, checkpoint/, training.json"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="effective batch, the negatives of each step (default: 256)"
    )
    parser.add_argument(
        "--micro-batch-size", type=int, default=32, help="samples per forward with gradient (default: 32)"
    )
    parser.add_argument("--epochs", type=int, default=1, help="passes over the data (default: 1)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (default: 2e-5)")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of steps of linear warm-up (default: 0.1)")
    parser.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (default: 0.05)")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per sentence (default: 32)")
    parser.add_argument(
        "--checkpoint-every", type=int, default=50, help="steps between checkpoints, 0 for the end only (default: 50)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if there is one")
    parser.add_argument("--bf16", action="store_true", help="run the encoder under bfloat16 autocast")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order and dropout (default: 0)")
    parser.add_argument("--no-eval", action="store_true", help="skip the STS-B evaluation before and after")
    parser.add_argument(
        "--eval-split", default="test", choices=("train", "dev", "test"), help="STS-B split (default: test)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the cached gradient of the first batch against its full-batch gradient (dropout "
        "replayed), print the error per parameter group and exit (0: within --tolerance, 1: not); no training",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="--verify's bound on each group's relative error (default: 1e-4)"
    )
    add_data_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Train (or, with ``--verify``, check the first batch's gradient) and print the summary.

    Args:
        args: the parsed command line.

    Returns:
        The exit code: 0, or for ``--verify`` 1 when an error exceeds ``--tolerance``.
    """
    # start-up time (and the nlp extra): the training module loads torch and sentence-transformers
    from kexue.contrastive.train import TrainProgress, train_embedder

    apply_data_argument(args)
    config = _config(args)
    if args.verify:
        return _verify(config, args.tolerance)
    err = stderr_console()
    bar = _TrainBar(err)
    try:
        result = train_embedder(
            config, resume=args.resume, progress=TrainProgress(start=bar.start, advance=bar.advance, message=err.print)
        )
    finally:
        bar.stop()
    _print_summary(err, config, result)
    return 0


def _config(args: argparse.Namespace) -> TrainConfig:
    """The training configuration the command line asks for."""
    from kexue.contrastive.train import TrainConfig  # start-up time (and the nlp extra)

    return TrainConfig(
        model=args.model,
        out=args.out,
        sentences=args.sentences,
        pairs=args.pairs,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        epochs=args.epochs,
        lr=args.lr,
        warmup=args.warmup,
        temperature=args.temperature,
        max_length=args.max_length,
        seed=args.seed,
        max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every,
        evaluate=not args.no_eval,
        eval_split=args.eval_split,
        data=args.data,
        autocast="bf16" if args.bf16 else None,
    )


class _TrainBar:
    """The training progress bar on stderr, started when training knows its number of steps."""

    def __init__(self, console: Console) -> None:
        # start-up time: `kexue --help` must not import rich
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None

    def start(self, total: int, done: int) -> None:
        """Show the bar at ``done`` of ``total`` steps."""
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, loss="-")

    def advance(self, loss: float) -> None:
        """One step done, with its loss."""
        if self.task is not None:
            self.bar.update(self.task, advance=1, loss=f"{loss:.4f}")

    def stop(self) -> None:
        """Stop the bar (one that never started is left alone: it would print an empty line before an error)."""
        if self.task is not None:
            self.bar.stop()


def _print_summary(err: Console, config: TrainConfig, result: TrainResult) -> None:
    """The steps, time and final loss, the STS-B scores before and after, and where the outputs are."""
    err.print(
        f"{result.steps} steps in {result.seconds:.1f} s (batch {result.extra['effective_batch']}, micro-batch "
        f"{config.micro_batch_size}); final loss {result.losses[-1]:.4f}"
        if result.losses
        else "no steps run"
    )
    if result.sts_before is not None:
        err.print(
            f"STS-B {config.eval_split} Spearman x100: before {result.sts_before:.2f}, after {result.sts_after:.2f}"
        )
    err.print(f"model: {result.out}/model  log: {result.out}/training.json")


def _verify(config: TrainConfig, tolerance: float) -> int:
    """``--verify``: print the cached gradient's error per parameter group; 0 when all are within ``tolerance``."""
    from rich.table import Table  # start-up time: `kexue --help` must not import rich

    from kexue.contrastive.train import verify_first_batch  # start-up time (and the nlp extra)

    check = verify_first_batch(config, tolerance=tolerance)
    table = Table(title="cached vs full-batch gradient of the first batch")
    table.add_column("parameter group")
    table.add_column("relative error", justify="right")
    table.add_column(f"≤ {tolerance:g}", justify="center")
    for group, error in check.rows():
        table.add_row(group, f"{error:.2e}", "yes" if error <= tolerance else "NO")
    console = stdout_console()
    console.print(table)
    console.print(
        f"{config.batch_size} samples per side, {check.micro_batches} micro-batches of at most "
        f"{config.micro_batch_size} in all; loss: cached {check.loss_cached:.6f}, full batch {check.loss_full:.6f}"
    )
    console.print(f"max error {check.max_error:.2e}: " + ("passed" if check.passed else "FAILED"))
    return 0 if check.passed else 1
