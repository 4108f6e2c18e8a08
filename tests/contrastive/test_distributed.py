"""Cross-process negatives: two gloo processes under torchrun give the single-process gradient."""

from __future__ import annotations

import pytest
import torch

from kexue.contrastive import distributed
from kexue.contrastive._torchrun_check import _shards, launch
from kexue.contrastive.cached import cached_backward
from kexue.contrastive.losses import InfoNCE


def test_two_gloo_processes_match_the_single_process_full_batch() -> None:
    result = launch(nproc=2, batch=48, micro=5, seed=0)
    assert result["shards"] == [16, 32]  # uneven shards exercise the padded gather
    assert result["fsdp_shards"] == [24, 24]  # FSDP2 all-gathers in every forward: equal micro-batch counts
    assert "same number of micro-batches on every rank" in result["fsdp_uneven_error"]
    assert "[8, 14]" in result["fsdp_uneven_error"]  # 16 and 32 samples in micro-batches of 5, both sides
    for wrap in ("plain", "ddp", "fsdp"):  # fsdp: FSDP2 fully_shard on gloo (CPU)
        assert result[f"{wrap}_grad_rel_err"] <= 1e-10
        assert result[f"{wrap}_loss_abs_err"] <= 1e-12


@pytest.mark.slow
def test_three_processes_odd_batch() -> None:
    result = launch(nproc=3, batch=31, micro=4, seed=3)
    assert sum(result["shards"]) == 31
    assert max(result[f"{wrap}_grad_rel_err"] for wrap in ("plain", "ddp", "fsdp")) <= 1e-10


def test_shards_cover_the_batch_unevenly() -> None:
    assert _shards(48, 2) == [(0, 16), (16, 48)]
    assert _shards(10, 3)[-1][1] == 10


def test_distributed_without_a_process_group_is_a_clear_error() -> None:
    encoder = torch.nn.Linear(3, 4)
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="init_process_group"):
        cached_backward(encoder, [x, x], InfoNCE(temperature=0.1), micro_batch_size=2, distributed=True)


def test_stash_and_unstash_keep_earlier_gradients() -> None:
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.ones(2, 2)
    params = [layer.weight, layer.bias]
    stashed = distributed.stash_grads(params)
    assert layer.weight.grad is None
    layer.weight.grad = torch.full((2, 2), 2.0)
    distributed.unstash_grads(params, stashed)
    assert torch.equal(layer.weight.grad, torch.full((2, 2), 3.0)) and layer.bias.grad is None
