"""Fine-tune a sentence-transformers model with the cached procedure (``kexue train-embedder``).

Two kinds of data:

* unsupervised SimCSE (Gao et al., arXiv:2104.08821): a text file with one sentence per line;
  each sentence is encoded twice and the two dropout views are the positive pair (the RNG
  replay of :func:`~kexue.contrastive.cached.cached_backward` keeps the gradient exact with
  dropout on);
* supervised pairs: a TSV file ``anchor<TAB>positive`` per line; the other rows' positives are
  the negatives (in-batch negatives, as in sentence-transformers' MultipleNegativesRankingLoss).

Every step uses the full effective batch (``batch_size`` samples) as negatives while only
``micro_batch_size`` samples are in a forward with gradient at a time. Checkpoints (model,
optimizer, scheduler, temperature, step, and the RNG of the CPU and of every accelerator device)
are written atomically to ``OUT/checkpoint`` and a later run with ``resume=True`` continues from
them, reproducing the same data order and dropout masks. The training state is loaded with
``torch.load(weights_only=True)``: a checkpoint holding arbitrary pickled objects is refused.

The encoder runs where the model is (CUDA when available); its RNG replay and ``autocast="bf16"``
follow the model's device.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from kexue._device import devices_of, load_rng_state_dict, rng_state_dict
from kexue._optional import require_extra
from kexue._shared import check_int, check_number, read_text
from kexue.contrastive.cached import cached_backward
from kexue.contrastive.losses import InfoNCE
from kexue.contrastive.st_loss import tokenized
from kexue.contrastive.verify import GradientCheck, verify_cached_gradients
from kexue.data import SentencePairs, StsSplit, load_sentence_transformer, load_stsb
from kexue.report.io import write_json
from kexue.sts import cosine_spearman, sentence_transformer_encoder

require_extra("kexue.contrastive.train (training sentence encoders)", "sentence_transformers", "transformers")

Autocast = Literal["bf16"]  # the encoder's autocast dtype (None: none)
AUTOCASTS: tuple[Autocast, ...] = get_args(Autocast)

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "load_trainer_state",
    "read_pairs",
    "read_sentences",
    "train_embedder",
]


@dataclass
class TrainConfig:
    """Settings of one fine-tuning run (the CLI's options).

    Args:
        model: folder of a sentence-transformers model (default: the embedded all-MiniLM-L6-v2).
        out: output folder: ``model/`` (final), ``checkpoint/``, ``training.json``.
        sentences: text file, one sentence per line (SimCSE); exclusive with ``pairs``.
        pairs: TSV file ``anchor<TAB>positive`` (supervised).
        batch_size: effective batch: the negatives of every step.
        micro_batch_size: samples per forward with gradient (memory).
        epochs: passes over the data.
        lr: AdamW's peak learning rate.
        warmup: the fraction of the steps with a linear warm-up (then a linear decay).
        temperature: InfoNCE's ``τ``.
        max_length: tokens per sentence in training.
        seed: the data order's and the dropout's seed.
        max_steps: stop after this many steps (default: all epochs).
        checkpoint_every: steps between checkpoints (0: only at the end).
        evaluate: STS-B Spearman before and after (needs the shared data folder).
        eval_split: STS-B split to evaluate on.
        data: the shared data folder (default: see :func:`kexue.data.data_root`).
        autocast: ``"bf16"`` to run the encoder under bfloat16 autocast (on the model's device type).
    """

    model: str | None = None
    out: str = "embedder-out"
    sentences: str | None = None
    pairs: str | None = None
    batch_size: int = 256
    micro_batch_size: int = 32
    epochs: int = 1
    lr: float = 2e-5
    warmup: float = 0.1
    temperature: float = 0.05
    max_length: int = 32
    seed: int = 0
    max_steps: int | None = None
    checkpoint_every: int = 50
    evaluate: bool = True
    eval_split: StsSplit = "test"
    data: str | None = None
    autocast: Autocast | None = None

    def validate(self) -> None:
        """Check every setting (before anything is read or written).

        Raises:
            ValueError: naming the setting, the value and what is accepted.
        """
        if (self.sentences is None) == (self.pairs is None):
            raise ValueError(
                "give exactly one of sentences (one sentence per line, SimCSE) or pairs (anchor<TAB>positive)"
            )
        check_int("batch_size", self.batch_size, 2)
        check_int("micro_batch_size", self.micro_batch_size, 1)
        if self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} must not exceed batch_size={self.batch_size}")
        check_int("epochs", self.epochs, 1)
        check_int("max_length", self.max_length, 2)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 1)
        check_number("lr", self.lr, above=0)
        check_number("temperature", self.temperature, above=0)
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1); got {self.warmup!r}")
        if self.autocast is not None and self.autocast not in AUTOCASTS:
            accepted = " or ".join(repr(a) for a in AUTOCASTS)
            raise ValueError(f"autocast must be None or {accepted}; got {self.autocast!r}")


def read_sentences(path: str | os.PathLike[str]) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file.

    Args:
        path: the file.

    Returns:
        The sentences (at least 2).
    """
    lines = [line.strip() for line in read_text(path, "sentences file").splitlines()]
    sentences = [s for s in lines if s]
    if len(sentences) < 2:
        raise ValueError(f"sentences file {path} has {len(sentences)} non-empty lines; at least 2 are needed")
    return sentences


def read_pairs(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``anchor<TAB>positive`` lines of a UTF-8 TSV file (blank lines skipped).

    Args:
        path: the file.

    Returns:
        ``(anchors, positives)`` (at least 2 pairs).
    """
    anchors, positives = [], []
    for number, line in enumerate(read_text(path, "pairs file").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise ValueError(f"pairs file {path} line {number}: expected 'anchor<TAB>positive'; got {line[:80]!r}")
        anchors.append(fields[0].strip())
        positives.append(fields[1].strip())
    if len(anchors) < 2:
        raise ValueError(f"pairs file {path} has {len(anchors)} pairs; at least 2 are needed")
    return anchors, positives


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place: the old one is only removed once the new one is there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` (a temporary folder's suffix) still runs (then its folder is not stale)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True


def _checkpoint_dir(out: Path) -> Path | None:
    for candidate in (out / "checkpoint", out / "checkpoint.old"):  # .old: a crash between the two renames
        if (candidate / "trainer_state.pt").exists():
            return candidate
    return None


@dataclass
class TrainProgress:
    """Minimal progress protocol: ``start(total, done)``, ``advance(loss)``; rich in the CLI.

    Args:
        start: called once with the total number of steps and those already done.
        advance: called after each step with its loss.
        message: called with each note for the user.
    """

    start: Callable[[int, int], None] = lambda total, done: None
    advance: Callable[[float], None] = lambda loss: None
    message: Callable[[str], None] = lambda text: None


@dataclass
class TrainResult:
    """What a run did (also written to ``OUT/training.json``).

    Args:
        steps: the step the run ended at.
        losses: the loss of every step (a resumed run's earlier ones included).
        sts_before: STS-B Spearman x100 before training (``None``: not evaluated).
        sts_after: the same after training.
        seconds: time of this run's steps.
        out: the output folder.
        resumed_from: the step the run started at.
        extra: samples, effective batch, steps per epoch, samples left out, sequence length.
    """

    steps: int
    losses: list[float]
    sts_before: float | None
    sts_after: float | None
    seconds: float
    out: str
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _load_model(path: str | None, max_length: int) -> Any:
    """The SentenceTransformer at ``path`` (default: the embedded one) on CUDA when there is one."""
    # Any: the model carries kexue's own attribute (its length for STS and saving) beside its typed ones
    model: Any = load_sentence_transformer(path, device="cuda" if torch.cuda.is_available() else "cpu")
    model.kexue_eval_length = model.max_seq_length  # STS is evaluated at the model's own length
    model.max_seq_length = max_length
    return model


def _encoder(model: Any) -> Callable[[list[str]], torch.Tensor]:
    def encode(texts: list[str]) -> torch.Tensor:
        embeddings: torch.Tensor = model(tokenized(model, texts))["sentence_embedding"]
        return embeddings

    return encode


def _read_sides(config: TrainConfig) -> list[list[str]]:
    if config.sentences is not None:
        first = read_sentences(config.sentences)
        return [first, first]  # SimCSE: the two dropout views of each sentence are the positive pair
    assert config.pairs is not None  # validate(): exactly one of sentences and pairs
    return list(read_pairs(config.pairs))


def _step_batch(config: TrainConfig, sides: list[list[str]], step: int) -> list[list[str]]:
    """The samples of ``step``: a window of its epoch's shuffled order (seed + epoch), full batches only."""
    n = len(sides[0])
    batch = min(config.batch_size, n)
    epoch, within = divmod(step, n // batch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
    index = order[within * batch : (within + 1) * batch].tolist()
    return [[side[i] for i in index] for side in sides]


def verify_first_batch(config: TrainConfig, *, tolerance: float = 1e-4) -> GradientCheck:
    """:func:`kexue.contrastive.verify.verify_cached_gradients` on the run's model and first batch.

    The model is in training mode (dropout on, replayed), and the micro-batches, temperature and
    seed are the run's own: what ``train_embedder`` would compute at its first step, against the
    gradient of that batch in one graph.

    Args:
        config: the run's settings.
        tolerance: the relative error allowed per parameter group.

    Returns:
        The :class:`~kexue.contrastive.verify.GradientCheck`.
    """
    config.validate()
    sides = _read_sides(config)
    model = _load_model(config.model, config.max_length)
    model.train()
    torch.manual_seed(config.seed)
    return verify_cached_gradients(
        model,
        _step_batch(config, sides, 0),
        InfoNCE(temperature=config.temperature).to(model.device),
        micro_batch_size=config.micro_batch_size,
        encoder=_encoder(model),
        tolerance=tolerance,
    )


def train_embedder(config: TrainConfig, *, resume: bool = False, progress: TrainProgress | None = None) -> TrainResult:
    """Run the fine-tuning described by ``config``; see the module docstring.

    Everything that can reject the input (the data, the checkpoint, the evaluation set) runs
    before the output folder is created.

    Args:
        config: the run's settings.
        resume: continue from ``config.out``'s checkpoint when there is one.
        progress: where progress and messages go (default: nowhere).

    Returns:
        The :class:`TrainResult`, also written to ``OUT/training.json``.
    """
    config.validate()
    progress = progress or TrainProgress()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} exists and is not a folder")
    sides = _read_sides(config)
    schedule = _schedule(config, len(sides[0]), progress)
    run = _start_run(config, out, schedule.total, resume=resume, progress=progress)
    evaluate = _sts_evaluator(config) if config.evaluate else None
    _prepare_out(out)
    if evaluate is not None and run.sts_before is None:
        progress.message("evaluating STS-B before training")
        run.sts_before = evaluate(run.model)
    if run.checkpoint is None:
        torch.manual_seed(config.seed)
    resumed_from = run.step
    seconds = _train_steps(config, sides, run, schedule.total, out, progress)
    if run.step > resumed_from:
        _save_checkpoint(out, run)
    tmp = out / f"model.tmp-{os.getpid()}"
    _save_at_own_length(run.model, tmp)
    _replace_dir(tmp, out / "model")
    sts_after = None
    if evaluate is not None:
        progress.message("evaluating STS-B after training")
        sts_after = evaluate(run.model)
    result = TrainResult(
        steps=run.step,
        losses=run.losses,
        sts_before=run.sts_before,
        sts_after=sts_after,
        seconds=seconds,
        out=str(out),
        resumed_from=resumed_from,
        extra={**schedule.extra(), "max_seq_length": run.model.kexue_eval_length},
    )
    write_json(out / "training.json", {"config": asdict(config), **asdict(result)})
    return result


@dataclass
class _Schedule:
    """How the data divides into steps."""

    samples: int
    batch: int
    steps_per_epoch: int
    total: int

    def extra(self) -> dict[str, int]:
        return {
            "samples": self.samples,
            "effective_batch": self.batch,
            "steps_per_epoch": self.steps_per_epoch,
            "samples_left_out_per_epoch": self.samples % self.batch,
        }


def _schedule(config: TrainConfig, n: int, progress: TrainProgress) -> _Schedule:
    """The run's steps over ``n`` samples (full batches only; says what each epoch leaves out)."""
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(config.max_steps, total)
    if n % batch:
        progress.message(
            f"{n} samples at batch {batch}: {steps_per_epoch} step(s) per epoch; {n % batch} samples of each "
            "epoch's shuffled order are left out (a different set each epoch), as every step needs a full batch "
            "of negatives; choose a batch size that divides the data to use all of it"
        )
    return _Schedule(samples=n, batch=batch, steps_per_epoch=steps_per_epoch, total=total)


@dataclass
class _Run:
    """The model and what trains it, at the step the run has reached."""

    model: Any  # a SentenceTransformer (sentence-transformers ships no type information)
    loss_fn: InfoNCE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    checkpoint: Path | None
    step: int = 0
    losses: list[float] = field(default_factory=list)
    sts_before: float | None = None


def _start_run(config: TrainConfig, out: Path, total: int, *, resume: bool, progress: TrainProgress) -> _Run:
    """The model, loss, optimizer and schedule, from the checkpoint in ``out`` when resuming."""
    checkpoint = _checkpoint_dir(out) if resume and out.is_dir() else None
    if resume and checkpoint is None:
        progress.message(f"no checkpoint in {out}; starting from the beginning")
    state = load_trainer_state(checkpoint) if checkpoint is not None else None  # refuse an unsafe file first
    model = _load_model(str(checkpoint) if checkpoint else config.model, config.max_length)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    warm = max(1, int(config.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    run = _Run(
        model=model,
        loss_fn=InfoNCE(temperature=config.temperature).to(model.device),
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoint=checkpoint,
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.step, run.losses, run.sts_before = state["step"], state["losses"], state.get("sts_before")
        for note in load_rng_state_dict(state["rng"]):
            progress.message(f"resuming: {note}; dropout continues from a fresh stream there")
        progress.message(f"resumed from {checkpoint} at step {run.step}/{total}")
    return run


def _prepare_out(out: Path) -> None:
    """Create the output folder and remove the temporary folders a killed run left there."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("model.tmp-*"), *out.glob("checkpoint.tmp-*")]:
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)


def _train_steps(
    config: TrainConfig, sides: list[list[str]], run: _Run, total: int, out: Path, progress: TrainProgress
) -> float:
    """The cached steps from ``run.step`` to ``total`` (checkpointing on the way); returns their seconds."""
    encode = _encoder(run.model)
    devices = devices_of(run.model)  # the encoder function is fed texts: its RNG and autocast devices are the model's
    autocast = torch.bfloat16 if config.autocast == "bf16" else None
    start = time.perf_counter()
    progress.start(total, run.step)
    while run.step < total:
        run.optimizer.zero_grad(set_to_none=True)
        step_result = cached_backward(
            encode,
            _step_batch(config, sides, run.step),
            run.loss_fn,
            micro_batch_size=config.micro_batch_size,
            autocast=autocast,
            devices=devices,
        )
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
        run.losses.append(float(step_result.loss))
        progress.advance(run.losses[-1])
        if config.checkpoint_every and run.step % config.checkpoint_every == 0 and run.step < total:
            _save_checkpoint(out, run)
    return time.perf_counter() - start


def load_trainer_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The training state of a checkpoint folder (optimizer, scheduler, step, losses, every RNG), loaded safely.

    ``trainer_state.pt`` is read with ``torch.load(..., weights_only=True)``: tensors, numbers,
    strings and containers only, so a crafted pickle cannot run code.

    Args:
        checkpoint: the checkpoint folder.

    Returns:
        The state: ``optimizer``, ``scheduler``, ``step``, ``losses``, ``rng`` (and ``sts_before``).

    Raises:
        ValueError: when the file holds anything else (or is not a checkpoint at all).
    """
    path = Path(checkpoint) / "trainer_state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(
            f"checkpoint file {path} is not a safe training state (tensors, numbers and containers only); "
            f"refusing to unpickle it ({_unpickling_reason(exc)})"
        ) from None
    missing = [
        key
        for key in ("optimizer", "scheduler", "step", "losses", "rng")
        if not isinstance(state, dict) or key not in state
    ]
    if missing:
        raise ValueError(f"checkpoint file {path} lacks {missing}; it was not written by kexue train-embedder")
    return state


def _unpickling_reason(exc: BaseException) -> str:
    """The line of a refused ``torch.load`` that names the offending object (torch's advice to
    retry with ``weights_only=False`` is left out: that is what must not be done)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(exc).__name__])[0].split(". Please")[0].rstrip(".")


def _save_checkpoint(out: Path, run: _Run) -> None:
    """Write ``out/checkpoint`` (the model at its own length, and the training state) atomically."""
    tmp = out / f"checkpoint.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_at_own_length(run.model, tmp)
    torch.save(
        {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "step": run.step,
            "losses": run.losses,
            "sts_before": run.sts_before,
            "rng": rng_state_dict(),
        },
        tmp / "trainer_state.pt",
    )
    _replace_dir(tmp, out / "checkpoint")


def _save_at_own_length(model: Any, folder: Path) -> None:
    """``model.save(folder)`` with the model's own ``max_seq_length``, not the training ``max_length``:
    whoever loads the saved model (or resumes from a checkpoint) must not silently truncate."""
    train_length = model.max_seq_length
    model.max_seq_length = model.kexue_eval_length
    try:
        model.save(str(folder))
    finally:
        model.max_seq_length = train_length


def _sts_evaluator(config: TrainConfig) -> Callable[[Any], float]:
    pairs: SentencePairs = load_stsb(config.eval_split, config.data)  # fail before training, not after

    def evaluate(model: Any) -> float:
        train_length = model.max_seq_length
        model.max_seq_length = getattr(model, "kexue_eval_length", train_length)
        try:
            score = cosine_spearman(sentence_transformer_encoder(model), pairs)
        finally:
            model.max_seq_length = train_length
        if not math.isfinite(score):
            raise FloatingPointError(f"STS-B Spearman is {score}")
        return score

    return evaluate
