"""The contrastive benchmark's peer comparison is sound: same gradients as sentence-transformers."""

from __future__ import annotations

import pytest
import torch

from kexue.contrastive import benchmark
from kexue.contrastive.losses import InfoNCE
from kexue.report.bench import Bench


def test_cached_step_matches_sentence_transformers_cached_mnrl() -> None:
    model = benchmark._model()
    model.eval()  # dropout off: the two libraries draw different masks
    q, d = benchmark._features(16, 1), benchmark._features(16, 2)
    loss_fn = InfoNCE(temperature=1.0 / benchmark.SCALE)
    ours_loss = benchmark._cached_step(model, loss_fn, q, d, micro=4)
    ours = benchmark._grads(model)
    theirs_loss = benchmark._st_step(model, benchmark._st_loss(model), q, d)
    theirs = benchmark._grads(model)
    assert ours_loss == pytest.approx(theirs_loss, rel=1e-6)
    assert benchmark._relative_difference(ours, theirs) <= 1e-5
    # and the comparison can fail: a different temperature gives a different gradient
    benchmark._cached_step(model, InfoNCE(temperature=0.1), q, d, micro=4)
    assert benchmark._relative_difference(benchmark._grads(model), theirs) > 1e-2


def test_relative_difference_counts_a_mismatch_as_infinite() -> None:
    a = [torch.ones(3)]
    assert benchmark._relative_difference(a, [*a, torch.ones(1)]) == float("inf")
    assert benchmark._relative_difference([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, 1.0])]) == pytest.approx(
        2**-0.5
    )


@pytest.mark.slow
def test_quick_benchmark_meets_its_targets() -> None:
    bench = Bench("contrastive", quick=True, repeats=2)
    for case in benchmark.BENCH.cases:
        case(bench)
    ratios = {r.id: r for r in bench.ratios}
    assert set(ratios) == {
        "contrastive.step_vs_plain",
        "contrastive.speed_vs_st",
        "contrastive.grad_vs_st",
        "contrastive.memory_vs_plain_micro",
        "contrastive.tiled_memory_fraction",
        "contrastive.tiled_vs_dense_error",
        "contrastive.trainer_vs_st",
        "contrastive.token_budget_speedup",
    }
    assert (
        ratios["contrastive.trainer_vs_st"].target == 1.1 and ratios["contrastive.token_budget_speedup"].target == 1.2
    )
    for judged in ("grad_vs_st", "tiled_memory_fraction", "tiled_vs_dense_error", "memory_vs_plain_micro"):
        assert ratios[f"contrastive.{judged}"].met, judged


def test_the_benchmark_pairs_are_a_fixed_random_draw_of_paraphrases() -> None:
    anchors, positives = benchmark._stsb_pairs(64)
    again = benchmark._stsb_pairs(64)
    assert (anchors, positives) == again and len(anchors) == 64 and len(set(anchors)) > 60
    from kexue.data import load_stsb

    stsb = load_stsb("train")
    scores = dict(zip(zip(stsb.sentences1, stsb.sentences2, strict=True), stsb.scores, strict=True))
    assert all(scores[pair] >= 4.0 for pair in zip(anchors, positives, strict=True))
