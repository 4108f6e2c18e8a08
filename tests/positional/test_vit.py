"""The digits ViT experiment: data, position modes, a short training run; the full check is slow."""

from __future__ import annotations

import pytest
import torch

from kexue.positional import vit
from kexue.positional.claims import ROPE
from kexue.report.claims import ClaimContext


def test_split_is_fixed_and_disjoint() -> None:
    a = vit.load_digits_split(seed=0)
    b = vit.load_digits_split(seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(a[1]) + len(a[3]) == 1797 and float(a[0].max()) == 1.0


def test_position_modes() -> None:
    flat = vit.TinyViT("rope-1d-flat")
    assert flat.positions(8, mode="extrapolate").tolist()[:10] == list(range(10))
    assert flat.positions(12, mode="extrapolate")[12].item() == 12  # (1, 0) → 1 · 12 + 0
    axial = vit.TinyViT("rope-2d-axial")
    inter = axial.positions(12, mode="interpolate")
    assert inter.max().item() == pytest.approx(7.0) and inter[1, 1].item() == pytest.approx(7 / 11)
    assert axial.positions(12, mode="extrapolate").max().item() == 11
    assert vit.TinyViT("learned").positions(12, mode="interpolate") is None
    with pytest.raises(ValueError, match="variant='alibi'"):
        vit.TinyViT("alibi")


@pytest.mark.parametrize("variant", vit.VARIANTS)
def test_forward_at_both_resolutions(variant: str) -> None:
    model = vit.TinyViT(variant)
    x = torch.rand(3, 1, 8, 8)
    assert model(vit._patches(x, vit.TRAIN_SIZE)).shape == (3, 10)
    assert model(vit._patches(x, vit.TEST_SIZE), mode="interpolate").shape == (3, 10)


def test_smaller_images_give_a_smaller_grid() -> None:
    result = vit.train_and_evaluate("rope-mixed", epochs=2, sizes=(8, 12))  # the quick scale's 4×4 → 6×6 tokens
    assert result.train_resolution > 0.15 and result.extrapolate is not None
    for bad in ((9, 12), (12, 8), (8, 8), (0, 4)):
        with pytest.raises(ValueError, match="sizes="):
            vit.train_and_evaluate("learned", epochs=1, sizes=bad)


def test_five_epochs_beat_chance() -> None:
    result = vit.train_and_evaluate("rope-2d-axial", epochs=5)
    assert result.train_resolution > 0.3  # chance is 0.1


@pytest.mark.slow
def test_vit_claims_quick_scale() -> None:
    ctx = ClaimContext(ROPE.technique, ROPE.article, mode="quick")
    check = next(c for c in ROPE.checks if c.__name__ == "vit_experiment")
    ROPE.run_check(check, ctx, debug=True)
    ids = {c.id for c in ctx.claims}
    assert ids == {f"rope.vit.{v}" for v in vit.VARIANTS} | {"rope.vit.all_variants_learn"}
    assert next(c for c in ctx.claims if c.id == "rope.vit.all_variants_learn").status == "pass"
    assert [f.name for f in ctx.figures] == ["vit_accuracy"]
