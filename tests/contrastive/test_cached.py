"""The cached procedure gives the full-batch gradient exactly: dropout on, towers, targets, temperature."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kexue.contrastive.cached import cached_backward, naive_accumulation_backward
from kexue.contrastive.claims import full_batch_reference
from kexue.contrastive.losses import InfoNCE, info_nce


def _mlp(seed: int, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 20), nn.Dropout(dropout), nn.Tanh(), nn.Linear(20, 8)).double()


def _grads(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for m in modules for p in m.parameters() if p.requires_grad]


def _close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-10) -> bool:
    return all(float((x - y).norm() / y.norm()) <= tol for x, y in zip(a, b, strict=True))


@settings(max_examples=12, deadline=None)
@given(micro=st.integers(1, 40), batch=st.integers(2, 40), seed=st.integers(0, 100))
def test_cached_equals_full_batch_with_dropout(micro: int, batch: int, seed: int) -> None:
    encoder, loss_fn = _mlp(seed), InfoNCE(temperature=0.1, learnable=True).double()
    x = torch.randn(batch, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    loss_ref, ref = full_batch_reference(encoder, loss_fn, x, micro, seed)
    encoder.zero_grad(), loss_fn.zero_grad()
    torch.manual_seed(seed)
    step = cached_backward(encoder, [x, x], loss_fn, micro_batch_size=micro)
    assert float(step.loss) == pytest.approx(loss_ref, abs=1e-12)
    assert _close(_grads(encoder, loss_fn), ref)


def test_separate_towers_multi_positive_and_hard_negatives() -> None:
    query_tower, doc_tower = _mlp(1), _mlp(2)
    q = torch.randn(10, 6, dtype=torch.float64)
    d = torch.randn(16, 6, dtype=torch.float64)  # 10 positives' documents + 6 hard negatives
    t = torch.zeros(10, 16, dtype=torch.float64)
    t[torch.arange(10), torch.arange(10)] = 0.7
    t[torch.arange(10), 10 + torch.arange(10) % 6] = 0.3  # a second, weaker positive

    def loss_fn(hq: torch.Tensor, hd: torch.Tensor) -> torch.Tensor:
        return info_nce(hq, hd, t, scale=5.0, symmetric=True)

    torch.manual_seed(0)
    hq = torch.cat([query_tower(q[i : i + 3]) for i in range(0, 10, 3)])
    hd = torch.cat([doc_tower(d[i : i + 3]) for i in range(0, 16, 3)])
    loss_fn(hq, hd).backward()
    ref = _grads(query_tower, doc_tower)
    query_tower.zero_grad(), doc_tower.zero_grad()
    torch.manual_seed(0)
    cached_backward([query_tower, doc_tower], [q, d], loss_fn, micro_batch_size=3)
    assert _close(_grads(query_tower, doc_tower), ref)


def test_dict_batches_and_sentence_transformers_style_output() -> None:
    class DictEncoder(nn.Module):  # takes tokenizer-like dicts, returns {"sentence_embedding": ...}
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.drop = nn.Embedding(50, 8).double(), nn.Dropout(0.1)

        def forward(self, features: dict) -> dict:
            h = self.drop(self.embed(features["input_ids"]))
            mask = features["attention_mask"].unsqueeze(-1).double()
            return {"sentence_embedding": (h * mask).sum(1) / mask.sum(1)}

    torch.manual_seed(3)
    encoder = DictEncoder()
    batch = {"input_ids": torch.randint(0, 50, (12, 7)), "attention_mask": (torch.rand(12, 7) > 0.2).long()}
    batch["attention_mask"][:, 0] = 1
    loss_fn = InfoNCE(temperature=0.2).double()
    torch.manual_seed(4)
    views = [
        torch.cat([encoder({k: v[i : i + 5] for k, v in batch.items()})["sentence_embedding"] for i in range(0, 12, 5)])
        for _ in range(2)
    ]
    loss_fn(*views).backward()
    ref = _grads(encoder)
    encoder.zero_grad()
    torch.manual_seed(4)
    cached_backward(encoder, [batch, batch], loss_fn, micro_batch_size=5)
    assert _close(_grads(encoder), ref)


def test_rng_continues_as_after_the_no_grad_pass() -> None:
    encoder, x = _mlp(0), torch.randn(8, 6, dtype=torch.float64)
    torch.manual_seed(5)
    with torch.no_grad():
        encoder(x[:4]), encoder(x[4:]), encoder(x[:4]), encoder(x[4:])
    expected = torch.rand(3)
    torch.manual_seed(5)
    cached_backward(encoder, [x, x], InfoNCE(temperature=0.1).double(), micro_batch_size=4)
    assert torch.equal(torch.rand(3), expected)


def test_naive_accumulation_differs_and_scale_loss() -> None:
    encoder, loss_fn = _mlp(0, dropout=0.0), InfoNCE(temperature=0.1).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    cached_backward(encoder, [x, x], loss_fn, micro_batch_size=4)
    exact = _grads(encoder)
    encoder.zero_grad()
    cached_backward(encoder, [x, x], loss_fn, micro_batch_size=4, scale_loss=0.25)
    assert _close(_grads(encoder), [g / 4 for g in exact])
    encoder.zero_grad()
    naive_accumulation_backward(encoder, [x, x], loss_fn, micro_batch_size=4)
    assert not _close(_grads(encoder), exact, tol=1e-2)


def test_batchnorm_is_rejected_and_eval_batchnorm_accepted() -> None:
    encoder = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        cached_backward(encoder, [x, x], InfoNCE(temperature=0.1).double(), micro_batch_size=4)
    encoder[1].eval()
    cached_backward(encoder, [x, x], InfoNCE(temperature=0.1).double(), micro_batch_size=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(micro_batch_size=0), "micro_batch_size=0"),
        (dict(micro_batch_size=2, encoders=[nn.Identity()] * 3), "3 encoders for 2 batches"),
    ],
)
def test_argument_errors(kwargs: dict, match: str) -> None:
    x = torch.randn(4, 3)
    encoders = kwargs.pop("encoders", nn.Identity())
    with pytest.raises(ValueError, match=match):
        cached_backward(encoders, [x, x], InfoNCE(temperature=0.1), **kwargs)


def test_non_finite_embeddings_and_loss_are_errors() -> None:
    x = torch.randn(4, 3)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="q contains 1 non-finite value"):  # named before any loss is formed
        cached_backward(nn.Identity(), [x, x], lambda a, b: info_nce(a, b, similarity="dot"), micro_batch_size=2)
    huge = torch.full((4, 3), 1e20)  # finite embeddings whose float32 dot products overflow
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf)"):
        cached_backward(nn.Identity(), [huge, huge], lambda a, b: info_nce(a, b, similarity="dot"), micro_batch_size=2)


def _autocast_full_batch(
    encoder: nn.Module, loss_fn: InfoNCE, x: torch.Tensor, micro: int, *, one_region: bool
) -> list[torch.Tensor]:
    """The full batch in one graph under bfloat16 CPU autocast: each micro-batch in its own autocast region (as
    the cached step runs them) or all in one region."""
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    region = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    # (not a disabled autocast around enabled ones: any enclosing autocast keeps the weight cast cache alive)
    outer, inner = (region(), contextlib.nullcontext) if one_region else (contextlib.nullcontext(), region)
    with outer:
        views = []
        for _ in range(2):
            parts = []
            for i in range(0, len(x), micro):
                with inner():
                    parts.append(encoder(x[i : i + micro]))
            views.append(torch.cat(parts).float())
    loss_fn(*views).backward()
    return _grads(encoder)


def test_autocast_bfloat16_matches_the_autocast_full_batch() -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.1), nn.GELU(), nn.Linear(64, 32))
    loss_fn = InfoNCE(temperature=0.05)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    same = _autocast_full_batch(encoder, loss_fn, x, 16, one_region=False)
    one_region = _autocast_full_batch(encoder, loss_fn, x, 16, one_region=True)
    encoder.zero_grad()
    torch.manual_seed(2)
    step = cached_backward(encoder, [x, x], loss_fn, micro_batch_size=16, autocast=torch.bfloat16)
    amp = _grads(encoder)
    encoder.zero_grad()
    torch.manual_seed(2)
    cached_backward(encoder, [x, x], loss_fn, micro_batch_size=16)
    fp32 = _grads(encoder)
    assert step.embeddings[0].dtype == torch.float32
    # the same autocast on both sides (one region per micro-batch): the same bfloat16 forwards and backward
    # products, summed in float32, at most in another order: measured 0 to 3e-9 over seeds (bit-identical mostly)
    assert _close(amp, same, tol=1e-7)
    # one autocast region around the whole batch reuses one bfloat16 copy of each weight, so autograd sums the
    # micro-batches' weight gradients in bfloat16 first: measured 4e-3..6e-3, bfloat16 noise in the reference
    assert _close(amp, one_region, tol=1e-2) and not _close(amp, one_region, tol=1e-4)
    assert _close(amp, fp32, tol=3e-2) and not _close(amp, fp32, tol=1e-3)  # bf16 is really in use


def test_plain_function_encoder_with_dropout_equals_the_full_batch() -> None:
    """What train-embedder passes: a function (its devices unseen), dropout on, texts-like list batches."""
    encoder, loss_fn = _mlp(7), InfoNCE(temperature=0.1).double()
    table = torch.randn(30, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def encode(words: list[int]) -> torch.Tensor:
        return encoder(table[torch.tensor(words)])

    batch = list(range(0, 30, 2))
    torch.manual_seed(8)
    views = [torch.cat([encode(batch[i : i + 4]) for i in range(0, len(batch), 4)]) for _ in range(2)]
    loss_fn(*views).backward()
    ref = _grads(encoder)
    encoder.zero_grad()
    torch.manual_seed(8)
    step = cached_backward(encode, [batch, batch], loss_fn, micro_batch_size=4, devices=["cpu"])
    assert _close(_grads(encoder), ref)
    assert step.surrogate.dim() == 0 and step.surrogate.dtype == torch.float64


def test_autocast_rejects_other_dtypes() -> None:
    with pytest.raises(ValueError, match="autocast"):
        cached_backward(
            nn.Linear(2, 2),
            [torch.randn(4, 2)] * 2,
            InfoNCE(temperature=0.1),
            micro_batch_size=2,
            autocast=torch.float64,
        )
