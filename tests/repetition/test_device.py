"""The generate hooks on any device: no host sync per token, beam reordering followed on the device,
``from_model`` on the model's device, and (``gpu``) the same tokens on CUDA without a sync."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from device_contract import count_host_syncs, cuda_sync_errors
from kexue.repetition.dry import DRYLogitsProcessor
from kexue.repetition.hf import LoopBreakingProcessor, LoopStoppingCriteria, PromptExcludedRepetitionPenalty
from kexue.repetition.hooks_reference import article_repeats, dry_penalties

BREAKERS = [(5, ()), (4, (0,)), (4, (0, 1))]


def _looping_rows(seed: int, rows: int = 3, length: int = 30, vocab: int = 7) -> torch.Tensor:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        s = [rng.randrange(vocab) for _ in range(length // 2)]
        out.append(s + (s[-3:] * length)[: length - len(s)])
    return torch.tensor(out)


def _dense(ref: dict[int, float], vocab: int) -> torch.Tensor:
    out = torch.zeros(vocab)
    for token, amount in ref.items():
        out[token] = amount
    return out


def test_dry_steps_do_not_sync_and_equal_the_definition() -> None:
    ids, vocab = _looping_rows(0), 7
    dry = DRYLogitsProcessor(
        0.8, base=1.75, allowed_length=2, breaker_ids=[[h, *t] for h, t in BREAKERS], prompt_length=4
    )
    with count_host_syncs() as syncs:
        got = [
            dry(ids[:, :t], torch.zeros(3, vocab)) for t in range(10, ids.shape[1] + 1)
        ]  # first call (the prompt) included
    assert syncs == []
    for t, scores in zip(range(10, ids.shape[1] + 1), got, strict=True):
        want = torch.stack(
            [_dense(dry_penalties(r, multiplier=0.8, breakers=BREAKERS, start=4), vocab) for r in ids[:, :t].tolist()]
        )
        assert torch.allclose(-scores, want, rtol=1e-6)


def test_dry_follows_beam_reordering_on_the_device() -> None:
    """Rows reordered between steps (what beam search does) continue their parent's state, as the old
    host-side comparison-and-rebuild did."""
    ids, vocab = _looping_rows(1, rows=4), 7
    dry = DRYLogitsProcessor(1.0, base=2.0, allowed_length=1, breaker_ids=[[5]])
    order = torch.arange(4)
    dry(ids[:, :12], torch.zeros(4, vocab))
    for t in range(13, ids.shape[1] + 1):
        order = order[torch.tensor([2, 0, 3, 1])] if t % 3 == 0 else order
        step = dry(ids[order, :t], torch.zeros(4, vocab))
        fresh = DRYLogitsProcessor(1.0, base=2.0, allowed_length=1, breaker_ids=[[5]])(
            ids[order, :t], torch.zeros(4, vocab)
        )
        assert torch.equal(step, fresh)


def test_dry_reset_starts_a_new_run_of_the_same_shape() -> None:
    ids = _looping_rows(2)
    dry = DRYLogitsProcessor(1.0, breaker_ids=[])
    dry(ids[:, :10], torch.zeros(3, 7))
    other = ids.flip(1)[:, :11]  # a new run whose shape looks like the next step
    dry.reset()
    assert torch.equal(dry(other, torch.zeros(3, 7)), DRYLogitsProcessor(1.0, breaker_ids=[])(other, torch.zeros(3, 7)))


def test_dry_ids_beyond_the_vocabulary_need_no_host_check() -> None:
    """Ids past the logits' width (and past every breaker) read the tables' overflow slot: not breakers,
    not penalised, no ``ids.max()`` on the host."""
    ids = torch.tensor([[1, 2, 30, 1, 2, 30, 1, 2]])
    dry = DRYLogitsProcessor(1.0, breaker_ids=[])
    with count_host_syncs() as syncs:
        out = dry(ids, torch.zeros(1, 8))
    assert syncs == [] and out.shape == (1, 8)
    want = _dense({k: v for k, v in dry_penalties(ids[0].tolist(), multiplier=1.0, breakers=[]).items() if k < 8}, 8)
    assert torch.allclose(-out[0], want)


def test_loop_criteria_and_processors_do_not_sync_per_token() -> None:
    ids, vocab = _looping_rows(3), 7
    stop = LoopStoppingCriteria(5, max_period=4, min_repeats=3)
    breaking = LoopBreakingProcessor(5, penalty=2.0, max_period=4, min_repeats=2)
    penalty = PromptExcludedRepetitionPenalty(1.3, prompt_length=5)
    done = []
    with count_host_syncs() as syncs:
        for t in range(8, ids.shape[1] + 1):
            done.append(stop(ids[:, :t], torch.zeros(3, vocab)))
            breaking(ids[:, :t], torch.randn(3, vocab))
            penalty(ids[:, :t], torch.randn(3, vocab))
    assert syncs == []
    for t, flags in zip(range(8, ids.shape[1] + 1), done, strict=True):  # stopped = a loop closed at or before t
        want = [
            any(article_repeats(r[5:u], max_period=4, min_period=1, min_repeats=3) for u in range(6, t + 1))
            for r in ids[:, :t].tolist()
        ]
        assert flags.tolist() == want
    hits = stop.hits
    assert all(h is not None and h.period == 3 for h in hits)


def test_loop_breaking_is_unchanged_by_the_branch_free_form() -> None:
    ids = torch.tensor([[7, 1, 2, 1, 2, 1, 2], [7, 3, 3, 3, 3, 3, 3]])
    scores = torch.tensor([[0.0, 4.0, -1.0, 0.0], [0.0, 1.0, 2.0, -6.0]])
    out = LoopBreakingProcessor(prompt_length=1, penalty=2.0, min_repeats=3)(ids, scores.clone())
    # row 0: 1 would close a period-2 loop; row 1: 3 closes periods 1 and 2 (3 needs 9 tokens), penalised once
    # per period
    assert out.tolist() == [[0.0, 2.0, -1.0, 0.0], [0.0, 1.0, 2.0, -24.0]]


class _DeviceProbe(nn.Module):
    """A stand-in model whose parameters live on the meta device: records where its inputs are."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device="meta"))
        self.config = type("Config", (), {"vocab_size": 5})()
        self.seen: list[torch.device] = []

    def forward(self, input_ids: torch.Tensor) -> None:
        self.seen.append(input_ids.device)
        raise RuntimeError("probe")


def test_from_model_puts_the_ids_on_the_models_device() -> None:
    """Regression (issue 27): the ids were built on the CPU whatever the model's device."""
    from kexue.repetition.transition import from_model

    probe = _DeviceProbe()
    with pytest.raises(RuntimeError, match="probe"):
        from_model(probe, torch.tensor([[1, 2, 3]]))
    assert probe.seen == [torch.device("meta")]


class _SyncFree(LogitsProcessor, StoppingCriteria):
    """Runs a processor or criteria under ``cuda_sync_errors()`` from its second call on (the first
    builds the state and copies DRY's breaker tables to the device once)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        with cuda_sync_errors(self.calls > 1):
            return self.inner(input_ids, scores, **kwargs)


@pytest.mark.gpu
def test_generate_with_dry_and_loop_stopping_on_cuda_matches_the_cpu_without_a_sync() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=2, n_positions=96)).eval()
    prompt = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4], [5, 6, 5, 6, 5, 6, 7, 8]])

    def run(device: str) -> tuple[torch.Tensor, list]:
        m, p = model.to(device), prompt.to(device)
        dry = DRYLogitsProcessor(0.8, breaker_ids=[[9], [10, 11]], prompt_length=8)
        stop = LoopStoppingCriteria(8, max_period=6, min_repeats=3, loop_budget=4)
        wrap = _SyncFree if device == "cuda" else (lambda x: x)
        out = m.generate(
            p,
            attention_mask=torch.ones_like(p),
            max_new_tokens=48,
            do_sample=False,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([wrap(dry)]),
            stopping_criteria=StoppingCriteriaList([wrap(stop)]),
        )
        return out.cpu(), stop.hits

    cuda_out, cuda_hits = run("cuda")
    cpu_out, cpu_hits = run("cpu")
    assert torch.equal(cuda_out, cpu_out) and cuda_hits == cpu_hits


@pytest.mark.gpu
def test_from_model_on_cuda() -> None:
    from kexue.repetition.transition import from_model

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=16, n_layer=1, n_head=2, n_positions=32)).double()
    ids = torch.randint(0, 16, (4, 12))
    cpu = from_model(model, ids)
    assert abs(from_model(model.cuda(), ids) - cpu).max() < 1e-10
