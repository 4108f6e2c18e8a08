"""What only CUDA shows: the CUDA generator replayed (exact gradients with dropout), CUDA autocast, every
device's RNG in a checkpoint, and no synchronisation in the cached step's loop. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from device_contract import cuda_sync_errors
from kexue._device import load_rng_state_dict, rng_state_dict
from kexue.contrastive.cached import cached_backward
from kexue.contrastive.losses import InfoNCE

pytestmark = pytest.mark.gpu


def _encoder(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.2), nn.GELU(), nn.Linear(64, 32)).to("cuda", dtype)


def _grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def _full_batch(
    encoder: nn.Module, loss_fn: nn.Module, x: torch.Tensor, micro: int, seed: int, amp: bool = False
) -> torch.Tensor:
    """One graph over the micro-batches in the cached step's order (so the same CUDA dropout masks)."""
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    views = []
    for _ in range(2):
        parts = []
        for i in range(0, len(x), micro):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                parts.append(encoder(x[i : i + micro]))
        views.append(torch.cat(parts).float() if amp else torch.cat(parts))
    loss_fn(*views).backward()
    return _grads(encoder)


def test_cached_gradient_with_cuda_dropout_is_exact_and_never_syncs() -> None:
    encoder, loss_fn = _encoder(torch.float64), InfoNCE(temperature=0.05, validate=False).to("cuda", torch.float64)
    x = torch.randn(48, 16, device="cuda", dtype=torch.float64)
    reference = _full_batch(encoder, loss_fn, x, 8, seed=1)
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with cuda_sync_errors():
        cached_backward(encoder, [x, x], loss_fn, micro_batch_size=8, validate=False)
    torch.cuda.synchronize()
    assert float((_grads(encoder) - reference).norm() / reference.norm()) <= 1e-10
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    cached_backward(encoder, [x, x], loss_fn, micro_batch_size=8, replay_rng=False)  # CUDA masks differ
    assert float((_grads(encoder) - reference).norm() / reference.norm()) > 1e-3


def test_a_plain_function_encoder_on_cuda_replays_the_cuda_generator() -> None:
    """What train-embedder passes: a function fed texts (no tensors to see), the model on CUDA."""
    encoder, loss_fn = _encoder(torch.float64), InfoNCE(temperature=0.05).to("cuda", torch.float64)
    table = torch.randn(40, 16, device="cuda", dtype=torch.float64)

    def encode(ids: list[int]) -> torch.Tensor:
        return encoder(table[torch.tensor(ids, device="cuda")])

    batch = list(range(40))
    reference = _full_batch(encoder, loss_fn, table, 8, seed=2)
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    cached_backward(encode, [batch, batch], loss_fn, micro_batch_size=8)  # CUDA found as initialised
    assert float((_grads(encoder) - reference).norm() / reference.norm()) <= 1e-10


def test_autocast_runs_on_cuda_and_equals_the_same_autocast_full_batch() -> None:
    encoder, loss_fn = _encoder(), InfoNCE(temperature=0.05).cuda()
    dtypes: list[torch.dtype] = []
    encoder[0].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    x = torch.randn(64, 16, device="cuda")
    reference = _full_batch(encoder, loss_fn, x, 16, seed=3, amp=True)
    encoder.zero_grad(set_to_none=True)
    dtypes.clear()
    torch.manual_seed(3)
    cached_backward(encoder, [x, x], loss_fn, micro_batch_size=16, autocast=torch.bfloat16)
    assert set(dtypes) == {torch.bfloat16}  # CUDA autocast, not the CPU's (which would leave float32 here)
    assert float((_grads(encoder) - reference).norm() / reference.norm()) <= 1e-5


def test_checkpoint_rng_state_covers_every_cuda_device() -> None:
    state = rng_state_dict()
    assert state["accelerator"] == "cuda" and len(state["devices"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda")
    torch.rand(4, device="cuda")
    assert load_rng_state_dict(state) == []
    assert torch.equal(torch.rand(4, device="cuda"), expected)
