"""``kexue bench contrastive``: the cached step against a plain step and sentence-transformers.

Cases (CPU, the embedded all-MiniLM-L6-v2 in training mode, dropout on; query and document
inputs of exactly 32 tokens; ``--quick`` quarters the batch):

* A: one training step at effective batch 256: a plain full-batch step (both sides forwarded
  and backpropagated at once) against kexue's cached step with micro-batches of 32, and
  sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (scale 20, mini-batch 32) at
  the same settings. Before timing, both cached implementations run once with dropout off
  and their parameter gradients are compared (max relative error, reported).
* B: peak resident memory of one step, each configuration in a fresh process: the cached
  step at effective batch 4096 / micro-batch 32 (512 with ``--quick``), with the tiled loss
  (blocks of 512), against a plain step at batch 32 plus the stored embeddings (the memory the
  cached step promises; with the dense loss, the 4096 x 4096 similarity matrix and its softmax
  gradient add about 120 MiB: measured 256 MiB against 134 MiB, ratio 1.91).
* C: the InfoNCE loss alone (forward + backward) at N = 32768, D = 384 (8192 with ``--quick``):
  the tiled loss (blocks of 1024) against the dense one: peak extra memory, and equality of
  the loss and gradients.

* D: one ``SentenceTransformerTrainer`` epoch over STS-B train pairs scored 4 or more (real,
  length-varied sentences drawn at random; 512 pairs, 128 with ``--quick``) at batch 64 and mini-batch 16,
  dropout on: sentence-transformers' ``CachedMultipleNegativesRankingLoss`` against kexue's
  ``CachedContrastiveLoss`` (same scale, same data order, same seed).
* E: one cached step of kexue's loss on those sentences, batch 128: micro-batches of 16 in
  batch order against a token budget of 16 times the mean length, longest first.

Ratios: ``contrastive.step_vs_plain`` (cached / plain time, target <= 1.45),
``contrastive.speed_vs_st`` (sentence-transformers time / kexue time, target >= 1.0),
``contrastive.grad_vs_st`` (max relative gradient difference, target <= 1e-5),
``contrastive.memory_vs_plain_micro`` (cached peak / (plain-32 peak + stored embeddings),
target <= 1.5), ``contrastive.tiled_memory_fraction`` (tiled extra peak / the N x N float32
matrix's bytes, target <= 0.10), ``contrastive.tiled_vs_dense_error`` (target <= 1e-5),
``contrastive.trainer_vs_st`` (trainer epoch with sentence-transformers' cached loss / with
kexue's, target >= 1.1), ``contrastive.token_budget_speedup`` (step time by count / by token
budget, target >= 1.2).
On CUDA, case B is skipped (one process holds the device) and A and C use CUDA memory stats.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from kexue._shared import quieter
from kexue.contrastive.cached import cached_backward
from kexue.contrastive.losses import InfoNCE, info_nce, info_nce_tiled
from kexue.contrastive.st_loss import CachedContrastiveLoss
from kexue.data import load_sentence_transformer, load_stsb
from kexue.report.bench import Bench, BenchSuite, CaseResult, PeakMemory, interleaved_times, run_in_fresh_process

BENCH = BenchSuite("contrastive")
TOKENS, MICRO, SCALE = 32, 32, 20.0
Step = Literal["cached", "plain"]  # the two steps case B measures in fresh processes
Features = dict[str, torch.Tensor]
Model = Any  # a SentenceTransformer (its output dict and the kexue attributes are untyped)


def _model(device: str = "cpu") -> Model:
    model = load_sentence_transformer(device=device)
    model.train()
    return model


def _features(batch: int, seed: int, vocab: int = 30522, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tokenised inputs of exactly ``TOKENS`` tokens: [CLS] random word pieces [SEP]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, TOKENS), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {
        k: v.to(device)
        for k, v in {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
        }.items()
    }


def _encoder(model: Model) -> Callable[[Features], torch.Tensor]:
    def encode(features: dict[str, torch.Tensor]) -> torch.Tensor:
        embeddings: torch.Tensor = model(dict(features))["sentence_embedding"]  # the model adds keys: a copy
        return embeddings

    return encode


def _plain_step(model: Model, loss_fn: InfoNCE, q: Features, d: Features) -> float:
    model.zero_grad(set_to_none=True)
    encode = _encoder(model)
    loss = loss_fn(encode(q), encode(d))
    loss.backward()
    return float(loss.detach())


def _cached_step(model: Model, loss_fn: InfoNCE, q: Features, d: Features, micro: int = MICRO) -> float:
    model.zero_grad(set_to_none=True)
    return float(cached_backward(_encoder(model), [q, d], loss_fn, micro_batch_size=micro).loss)


def _st_loss(model: Model) -> Any:
    """sentence-transformers' cached loss, the peer."""
    try:  # optional extra: nlp (the peer)
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    except ImportError:  # optional extra: nlp; sentence-transformers < 5.2 keeps it here
        from sentence_transformers.losses import (  # type: ignore[no-redef]  # the same class, its older home
            CachedMultipleNegativesRankingLoss,
        )
    return CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=MICRO)


def _st_step(model: Model, st_loss: Any, q: Features, d: Features) -> float:
    model.zero_grad(set_to_none=True)
    loss = st_loss([dict(q), dict(d)], None)
    loss.backward()
    return float(loss.detach())


def _grads(model: Model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _relative_difference(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    """‖Δ‖ / ‖g‖ over all parameters as one vector. Per-parameter ratios are meaningless for the
    attention key biases, whose true gradient is zero (softmax ignores a per-row constant) and
    whose computed gradient is rounding noise of about 1e-8."""
    if len(ours) != len(theirs):
        return float("inf")
    diff = torch.cat([(a - b).reshape(-1) for a, b in zip(ours, theirs, strict=True)]).double()
    ref = torch.cat([b.reshape(-1) for b in theirs]).double()
    return float(diff.norm() / ref.norm())


@BENCH.case
def step_time(bench: Bench) -> None:
    batch = 64 if bench.quick else 256
    torch.manual_seed(0)
    model = _model(bench.device)
    loss_fn = InfoNCE(temperature=1.0 / SCALE)
    q, d = _features(batch, 1, device=bench.device), _features(batch, 2, device=bench.device)
    st_loss = _st_loss(model)

    model.eval()  # dropout off: both cached implementations must give the same gradient
    _cached_step(model, loss_fn, q, d)
    ours = _grads(model)
    _st_step(model, st_loss, q, d)
    theirs = _grads(model)
    model.train()
    grad_err = _relative_difference(ours, theirs)

    case = f"A: one step, batch {batch}, {TOKENS} tokens, all-MiniLM-L6-v2"
    params = {"batch": batch, "micro": MICRO, "tokens": TOKENS, "threads": torch.get_num_threads()}
    plain = bench.time(case, "plain full-batch step", lambda: _plain_step(model, loss_fn, q, d), params=params)
    cached = bench.time(
        case, f"kexue cached_backward (micro {MICRO})", lambda: _cached_step(model, loss_fn, q, d), params=params
    )
    st = bench.time(
        case,
        f"sentence-transformers CachedMNRL (mini-batch {MICRO})",
        lambda: _st_step(model, st_loss, q, d),
        params=params,
    )
    bench.ratio(
        "contrastive.step_vs_plain",
        cached.median_s / plain.median_s,
        target=1.45,
        higher_is_better=False,
        description=f"kexue cached step ({batch}/{MICRO}) time / plain full-batch step time",
    )
    bench.ratio(
        "contrastive.speed_vs_st",
        st.median_s / cached.median_s,
        target=1.0,
        description="sentence-transformers CachedMultipleNegativesRankingLoss step time / kexue cached step time",
    )
    bench.ratio(
        "contrastive.grad_vs_st",
        grad_err,
        target=1e-5,
        higher_is_better=False,
        description="‖g_kexue − g_st‖ / ‖g_st‖ over all parameters (dropout off)",
    )


def _memory_child(config: Step, batch: int) -> dict[str, float]:
    """Run in a fresh process: peak resident growth (bytes) and time of one steady-state step."""
    torch.manual_seed(0)
    model = _model()
    # at large batches the B x B similarity matrix of the loss would dominate: tile it
    loss_fn = InfoNCE(temperature=1.0 / SCALE, tiled=config == "cached", tile=512)
    q, d = _features(batch, 1), _features(batch, 2)
    step: Callable[[Model, InfoNCE, Features, Features], float] = _cached_step if config == "cached" else _plain_step
    step(model, loss_fn, q, d)  # the first step allocates the gradients; measure the next one
    memory = PeakMemory("cpu")
    base = memory.start()
    start = time.perf_counter()
    step(model, loss_fn, q, d)
    return {"seconds": time.perf_counter() - start, "peak": memory.stop(base)}


def _peak_in_fresh_process(config: Step, batch: int) -> dict[str, float]:
    result: dict[str, float] = run_in_fresh_process(__name__, "_memory_child", config, batch)
    return result


@BENCH.case
def step_memory(bench: Bench) -> None:
    if bench.device != "cpu":
        return
    batch = 512 if bench.quick else 4096
    cached = _peak_in_fresh_process("cached", batch)
    plain = _peak_in_fresh_process("plain", MICRO)
    stored = 2 * batch * 384 * 4  # the cached float32 embeddings of both sides
    case = f"B: peak memory of one step, fresh process ({TOKENS} tokens)"
    for impl, child in ((f"kexue cached step {batch}/{MICRO}", cached), (f"plain step at batch {MICRO}", plain)):
        bench.cases.append(
            CaseResult(
                technique=bench.technique,
                case=case,
                impl=impl,
                median_s=child["seconds"],
                times_s=[child["seconds"]],
                peak_bytes=int(child["peak"]),
                params={"batch": batch, "micro": MICRO, "process": "fresh"},
            )
        )
    bench.ratio(
        "contrastive.memory_vs_plain_micro",
        cached["peak"] / (plain["peak"] + stored),
        target=1.5,
        higher_is_better=False,
        description=(
            f"peak RSS growth of the cached step at {batch}/{MICRO} / (a plain step at batch {MICRO} "
            f"+ the {stored / 2**20:.1f} MiB of stored embeddings)"
        ),
    )


@BENCH.case
def tiled_memory(bench: Bench) -> None:
    n, dim = (8192, 384) if bench.quick else (32768, 384)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(n, dim, generator=g).to(bench.device)
    d = torch.randn(n, dim, generator=g).to(bench.device)
    kept: dict[str, tuple[float, torch.Tensor, torch.Tensor]] = {}

    def run(name: str, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        qq, dd = q.detach().requires_grad_(True), d.detach().requires_grad_(True)
        value = loss(qq, dd)
        value.backward()
        assert qq.grad is not None and dd.grad is not None  # both take part in the loss
        kept[name] = (float(value.detach()), qq.grad, dd.grad)  # the last call's; compared below

    case = f"C: InfoNCE loss forward + backward, N = {n}, D = {dim}"
    params = {"n": n, "dim": dim, "tile": 1024}

    def dense_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return info_nce(a, b, scale=SCALE)

    bench.time(case, "dense info_nce", lambda: run("dense", dense_loss), repeats=1, params=params)
    dense = kept.pop("dense")
    tiled = bench.time(
        case,
        "kexue info_nce_tiled",
        lambda: run("tiled", lambda a, b: info_nce_tiled(a, b, scale=SCALE, tile=1024)),
        repeats=1,
        params=params,
    )
    matrix = n * n * 4
    if tiled.peak_bytes is not None:
        bench.ratio(
            "contrastive.tiled_memory_fraction",
            tiled.peak_bytes / matrix,
            target=0.10,
            higher_is_better=False,
            description=(
                f"peak extra memory of the tiled loss (forward + backward) / the dense {n}x{n} float32 matrix "
                f"({matrix / 2**30:.1f} GiB)"
            ),
        )
    ours = kept["tiled"]
    err = max(
        abs(ours[0] - dense[0]) / abs(dense[0]),
        *[float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours[1:], dense[1:], strict=True)],
    )
    bench.ratio(
        "contrastive.tiled_vs_dense_error",
        err,
        target=1e-5,
        higher_is_better=False,
        description="tiled vs dense: max relative error of the loss and of the q and d gradients",
    )


def _stsb_pairs(count: int) -> tuple[list[str], list[str]]:
    """``count`` STS-B train pairs scored 4 or more (near-paraphrases: anchor and positive), drawn
    at random (seed 0) as a shuffling trainer draws its batches; the file itself is grouped by
    source, its first hundreds of pairs uniformly short headlines."""
    stsb = load_stsb("train")
    pool = [(a, b) for a, b, s in zip(stsb.sentences1, stsb.sentences2, stsb.scores, strict=True) if s >= 4.0]
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:count].tolist()
    return [pool[i][0] for i in pick], [pool[i][1] for i in pick]


def _trainer_epoch(model: Model, loss: Any, anchors: list[str], positives: list[str], batch: int, out: str) -> float:
    """Seconds of one SentenceTransformerTrainer epoch (the trainer built outside the timing)."""
    from datasets import Dataset  # optional extra: train
    from sentence_transformers import (  # optional extra: train (the trainer)
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    args = SentenceTransformerTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=2e-5,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        dataloader_drop_last=True,
        disable_tqdm=True,
    )
    with quieter("sentence_transformers"), quieter("transformers"):
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            loss=loss,
            train_dataset=Dataset.from_dict({"anchor": anchors, "positive": positives}),
        )
        start = time.perf_counter()
        trainer.train()
    return time.perf_counter() - start


@BENCH.case
def trainer_epoch(bench: Bench) -> None:
    """D: a SentenceTransformerTrainer epoch with sentence-transformers' cached loss and with kexue's."""
    if bench.device != "cpu":
        return
    anchors, positives = _stsb_pairs(128 if bench.quick else 512)
    batch, mini = 64, 16
    case = f"D: SentenceTransformerTrainer epoch, {len(anchors)} STS-B pairs, batch {batch}, mini-batch {mini}"
    params = {"pairs": len(anchors), "batch": batch, "mini_batch": mini, "threads": torch.get_num_threads()}
    times: dict[str, list[float]] = {"st": [], "kexue": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(1 if bench.quick else 2):  # interleaved: a drift of the machine hits both alike
            for name in times:
                torch.manual_seed(0)
                model = _model()
                loss = (
                    _st_loss(model)
                    if name == "st"
                    else CachedContrastiveLoss(model, scale=SCALE, micro_batch_size=mini)
                )
                if name == "st":
                    loss.mini_batch_size = mini
                times[name].append(_trainer_epoch(model, loss, anchors, positives, batch, out))
    st = bench.record(case, f"sentence-transformers CachedMNRL (mini-batch {mini})", times["st"], params=params)
    ours = bench.record(
        case, f"kexue CachedContrastiveLoss (micro-batch {mini}, sorted by length)", times["kexue"], params=params
    )
    bench.ratio(
        "contrastive.trainer_vs_st",
        st.median_s / ours.median_s,
        target=1.1,
        description="trainer epoch with sentence-transformers' CachedMultipleNegativesRankingLoss / with kexue's loss",
    )


@BENCH.case
def token_budget(bench: Bench) -> None:
    """E: one cached step on length-varied sentences, micro-batches by count (batch order) vs by a token budget."""
    if bench.device != "cpu":
        return
    anchors, positives = _stsb_pairs(128)
    torch.manual_seed(0)
    model = _model()
    features = [model.preprocess(anchors), model.preprocess(positives)]
    mean = float(torch.cat([f["attention_mask"].sum(1) for f in features]).float().mean())
    budget = int(16 * mean)
    by_count = CachedContrastiveLoss(model, scale=SCALE, micro_batch_size=16, sort_by_length=False)
    by_tokens = CachedContrastiveLoss(model, scale=SCALE, micro_batch_tokens=budget)

    def step(loss: CachedContrastiveLoss) -> None:
        model.zero_grad(set_to_none=True)
        loss([dict(f) for f in features]).backward()

    case = f"E: cached step, {len(anchors)} STS-B pairs (mean {mean:.1f} tokens)"
    params = {"pairs": len(anchors), "micro_batch_size": 16, "micro_batch_tokens": budget}
    times = interleaved_times(
        {"count": lambda: step(by_count), "tokens": lambda: step(by_tokens)},
        bench.repeats if bench.quick else max(bench.repeats, 5),
    )
    count = bench.record(case, "micro-batches of 16, batch order", times["count"], params=params)
    tokens = bench.record(
        case, f"token budget {budget} (16 x mean length), longest first", times["tokens"], params=params
    )
    bench.ratio(
        "contrastive.token_budget_speedup",
        count.median_s / tokens.median_s,
        target=1.2,
        description="cached step time with count-based micro-batches / with a token budget (length-varied inputs)",
    )
