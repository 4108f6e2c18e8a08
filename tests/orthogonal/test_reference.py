"""The oracle itself: the printed closed forms agree with the construction they come from."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.orthogonal import reference

KINDS = ("reflection", "rotation", "symmetric")


def _pair(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return reference.unit(rng.standard_normal(d)), reference.unit(rng.standard_normal(d))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [2, 3, 7, 64])
def test_closed_form_equals_plane_construction(kind: str, d: int) -> None:
    for seed in range(5):
        a, b = _pair(d, seed)
        np.testing.assert_allclose(
            reference.closed_form(a, b, kind=kind), reference.plane_construction(a, b, kind=kind), atol=1e-13
        )


@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_is_orthogonal_and_maps_a_to_b(kind: str) -> None:
    a, b = _pair(9, 1)
    T = reference.closed_form(a, b, kind=kind)
    np.testing.assert_allclose(T @ T.T, np.eye(9), atol=1e-14)
    np.testing.assert_allclose(T @ a, b, atol=1e-14)


def test_the_three_forms_are_different_maps() -> None:
    a, b = _pair(6, 2)
    forms = {k: reference.closed_form(a, b, kind=k) for k in KINDS}
    assert np.abs(forms["reflection"] - forms["rotation"]).max() > 0.1
    assert np.abs(forms["reflection"] - forms["symmetric"]).max() > 0.1
    # outside span{a, b}: reflection and rotation are I, symmetric is -I
    q, _ = np.linalg.qr(np.stack([a, b], axis=1))
    x = np.random.default_rng(3).standard_normal(6)
    x -= q @ (q.T @ x)
    np.testing.assert_allclose(forms["reflection"] @ x, x, atol=1e-14)
    np.testing.assert_allclose(forms["rotation"] @ x, x, atol=1e-14)
    np.testing.assert_allclose(forms["symmetric"] @ x, -x, atol=1e-14)


def test_printed_forms_break_at_their_degenerate_points() -> None:
    a = np.array([0.5, -0.5, 0.5, 0.5])  # exactly unit: 1 + a·(−a) is exactly 0 in any summation order
    assert not np.isfinite(reference.closed_form(a, a, kind="reflection")).all()
    assert not np.isfinite(reference.closed_form(a, -a, kind="rotation")).all()
    assert not np.isfinite(reference.closed_form(a, -a, kind="symmetric")).all()


def test_plane_construction_rejects_parallel_inputs() -> None:
    a, _ = _pair(4, 5)
    with pytest.raises(ValueError, match="a != ±b"):
        reference.plane_construction(a, -a, kind="rotation")
