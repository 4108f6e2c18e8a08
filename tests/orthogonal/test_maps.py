"""The fast path (kexue.orthogonal.maps) against the float64 reference, and its contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kexue.orthogonal import apply_orthogonal_map, orthogonal_map, reference

KINDS = ("reflection", "rotation", "symmetric")
SYMMETRIC = ("reflection", "symmetric")
EPS32 = float(np.finfo(np.float32).eps)


def _pair(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(d), rng.standard_normal(d)


def _expected_det(kind: str, d: int) -> float:
    return {"reflection": -1.0, "rotation": 1.0, "symmetric": (-1.0) ** (d - 1)}[kind]


# --- against the reference -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [2, 3, 16, 300])
def test_matrix_matches_reference_float64(kind: str, d: int) -> None:
    for seed in range(4):
        a, b = _pair(d, seed)
        np.testing.assert_allclose(orthogonal_map(a, b, kind=kind), reference.closed_form(a, b, kind=kind), atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("inverse", [False, True])
def test_apply_matches_dense_reference_float64(kind: str, inverse: bool) -> None:
    a, b = _pair(48, 7)
    x = np.random.default_rng(8).standard_normal((5, 33, 48))
    T = reference.closed_form(a, b, kind=kind)
    expected = x @ (T if inverse else T.T)
    np.testing.assert_allclose(apply_orthogonal_map(x, a, b, kind=kind, inverse=inverse), expected, atol=1e-13)
    xt = torch.from_numpy(x)
    got = apply_orthogonal_map(xt, torch.from_numpy(a), torch.from_numpy(b), kind=kind, inverse=inverse)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_error_within_twice_the_plain_float32_reference(kind: str) -> None:
    """flash-attention's rule: fast-path error vs float64 ≤ 2x the same-dtype reference's error."""
    worst_fast = worst_plain = 0.0
    for seed in range(20):
        a, b = _pair(256, seed)
        x = np.random.default_rng(100 + seed).standard_normal((64, 256))
        exact = x @ reference.closed_form(a, b, kind=kind).T
        x32 = x.astype(np.float32)
        plain = x32 @ reference.closed_form(a.astype(np.float32), b.astype(np.float32), kind=kind, dtype=np.float32).T
        fast = apply_orthogonal_map(
            torch.from_numpy(x32),
            torch.from_numpy(a.astype(np.float32)),
            torch.from_numpy(b.astype(np.float32)),
            kind=kind,
        ).numpy()
        worst_plain = max(worst_plain, np.abs(plain - exact).max())
        worst_fast = max(worst_fast, np.abs(fast - exact).max())
    assert worst_fast <= 2 * worst_plain, (worst_fast, worst_plain)


# --- properties ----------------------------------------------------------------------------------

vectors = (
    st.integers(min_value=2, max_value=40)
    .flatmap(
        lambda d: st.tuples(
            arrays(np.float64, d, elements=st.floats(-100, 100, allow_nan=False, allow_subnormal=False)),
            arrays(np.float64, d, elements=st.floats(-100, 100, allow_nan=False, allow_subnormal=False)),
        )
    )
    .filter(lambda ab: np.abs(ab[0]).max() > 1e-3 and np.abs(ab[1]).max() > 1e-3)
)


@settings(max_examples=60, deadline=None)
@given(ab=vectors, kind=st.sampled_from(KINDS))
def test_properties_hold_for_any_pair(ab: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    a, b = ab
    d = a.shape[0]
    a_n, b_n = a / np.linalg.norm(a), b / np.linalg.norm(b)
    T = orthogonal_map(a, b, kind=kind)
    np.testing.assert_allclose(T @ T.T, np.eye(d), atol=1e-12)
    Ta = T @ a_n
    np.testing.assert_allclose(Ta, b_n, atol=1e-12)  # includes a = ±b: the canonical choice
    assert Ta @ b_n > 0  # positive factor
    if kind in SYMMETRIC:
        np.testing.assert_allclose(T, T.T, atol=1e-13)
        np.testing.assert_allclose(T @ b_n, a_n, atol=1e-12)
    assert np.linalg.det(T) == pytest.approx(_expected_det(kind, d), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(ab=vectors, kind=st.sampled_from(KINDS))
def test_inverse_undoes_the_map(ab: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    a, b = ab
    x = np.random.default_rng(0).standard_normal((7, a.shape[0]))
    y = apply_orthogonal_map(x, a, b, kind=kind)
    np.testing.assert_allclose(apply_orthogonal_map(y, a, b, kind=kind, inverse=True), x, atol=1e-11)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-12)


def test_rotation_is_identity_off_the_plane_and_symmetric_is_minus_identity() -> None:
    a, b = _pair(10, 3)
    q, _ = np.linalg.qr(np.stack([a, b], axis=1))
    x = np.random.default_rng(4).standard_normal((3, 10))
    x -= (x @ q) @ q.T
    np.testing.assert_allclose(apply_orthogonal_map(x, a, b, kind="rotation"), x, atol=1e-13)
    np.testing.assert_allclose(apply_orthogonal_map(x, a, b, kind="reflection"), x, atol=1e-13)
    np.testing.assert_allclose(apply_orthogonal_map(x, a, b, kind="symmetric"), -x, atol=1e-13)


def test_worked_example_of_the_article() -> None:
    a, b = np.array([1, 2, 3, 4, 5]), np.array([9, 8, 7, 6, 5])  # integers become float64
    for kind in KINDS:
        T = orthogonal_map(a, b, kind=kind)
        assert T.dtype == np.float64
        np.testing.assert_allclose(T @ (a / np.linalg.norm(a)), b / np.linalg.norm(b), atol=1e-15)
    # the article's symmetric answer (a+b)(a+b)^T/(1+cos) - I, written out by hand
    a_n, b_n = a / np.linalg.norm(a), b / np.linalg.norm(b)
    by_hand = np.outer(a_n + b_n, a_n + b_n) / (1 + a_n @ b_n) - np.eye(5)
    np.testing.assert_allclose(orthogonal_map(a, b, kind="symmetric"), by_hand, atol=1e-15)


# --- degenerate and near-degenerate --------------------------------------------------------------


@pytest.mark.parametrize(("kind", "sign"), [("reflection", 1.0), ("rotation", -1.0), ("symmetric", -1.0)])
def test_degenerate_point_canonical_choice(kind: str, sign: float) -> None:
    a = np.array([0.6, 0.0, -0.8, 0.0])  # smallest |a_k| first at k = 1
    b = sign * a
    T = orthogonal_map(a, b, kind=kind)
    np.testing.assert_allclose(T @ T.T, np.eye(4), atol=1e-15)
    np.testing.assert_allclose(T @ a, b, atol=1e-15)
    assert np.linalg.det(T) == pytest.approx(_expected_det(kind, 4))
    p = np.array([0.0, 1.0, 0.0, 0.0])  # the canonical perpendicular e_1 - a_1 a = e_1
    expected = {
        "reflection": np.eye(4) - 2 * np.outer(p, p),
        "rotation": np.eye(4) - 2 * np.outer(a, a) - 2 * np.outer(p, p),
        "symmetric": 2 * np.outer(p, p) - np.eye(4),
    }[kind]
    np.testing.assert_allclose(T, expected, atol=1e-15)


@pytest.mark.parametrize(("kind", "sign"), [("reflection", 1.0), ("rotation", -1.0), ("symmetric", -1.0)])
def test_degenerate_point_raises_on_request(kind: str, sign: float) -> None:
    a = np.array([1.0, 2.0, 2.0]) / 3
    with pytest.raises(ValueError, match="degenerate input"):
        orthogonal_map(a, sign * a, kind=kind, degenerate="raise")
    # the other degenerate point is regular for this kind
    orthogonal_map(a, -sign * a, kind=kind, degenerate="raise")


def test_degenerate_error_names_the_batch_index() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    b = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"batch index \(1,\)"):
        orthogonal_map(a, b, kind="rotation", degenerate="raise")


def test_dimension_one() -> None:
    one, minus = np.array([1.0]), np.array([-1.0])
    np.testing.assert_allclose(orthogonal_map(one, minus, kind="reflection"), [[-1.0]])
    np.testing.assert_allclose(orthogonal_map(one, one, kind="rotation"), [[1.0]])
    np.testing.assert_allclose(orthogonal_map(one, one, kind="symmetric"), [[1.0]])
    for kind, b in (("reflection", one), ("rotation", minus), ("symmetric", minus)):
        with pytest.raises(ValueError, match="dimension 1"):
            orthogonal_map(one, b, kind=kind)


@pytest.mark.parametrize("kind", KINDS)
def test_near_degenerate_float32_stays_accurate(kind: str) -> None:
    rng = np.random.default_rng(11)
    d = 64
    for gap in (1e-2, 1e-4, 1e-6, 1e-8):
        a, b = reference.near_degenerate_pair(rng, d, kind=kind, gap=gap)
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        a_n = reference.unit(a32, dtype=np.float32).astype(np.float64)
        b_n = reference.unit(b32, dtype=np.float32).astype(np.float64)
        T = orthogonal_map(torch.from_numpy(a32), torch.from_numpy(b32), kind=kind)
        assert T.dtype == torch.float32
        T = T.double().numpy()
        assert np.abs(T @ T.T - np.eye(d)).max() <= 4 * EPS32
        assert np.abs(T @ a_n - b_n).max() <= 4 * EPS32
        y = apply_orthogonal_map(a_n.astype(np.float32)[None], a32, b32, kind=kind)[0]
        assert np.abs(y - b_n).max() <= 4 * EPS32


@pytest.mark.parametrize("kind", KINDS)
def test_near_degenerate_float64_stays_accurate(kind: str) -> None:
    """Naively, rounding leaves ‖a‖ ≠ ‖b‖ by ε and the residual grows as ε/gap (0.02 at 1e-14)."""
    rng = np.random.default_rng(22)
    d = 64
    for gap in (1e-4, 1e-8, 1e-12, 1e-14, 1e-15, 1e-16):
        for _ in range(5):
            a, b = reference.near_degenerate_pair(rng, d, kind=kind, gap=gap)
            a_n, b_n = reference.unit(a), reference.unit(b)
            T = orthogonal_map(a, b, kind=kind)
            assert np.abs(T @ a_n - b_n).max() <= 8 * np.finfo(np.float64).eps, gap
            assert np.abs(T @ T.T - np.eye(d)).max() <= 8 * np.finfo(np.float64).eps, gap


@pytest.mark.parametrize(("kind", "sign"), [("reflection", 3.0), ("rotation", -3.0), ("symmetric", -3.0)])
def test_parallel_inputs_of_different_length_are_degenerate(kind: str, sign: float) -> None:
    """b = ±3a exactly: after normalisation the gap is rounding noise, so the canonical map is used."""
    a = np.array([1.0, 3.0, 5.0, 7.0])
    T = orthogonal_map(a, sign * a, kind=kind)
    np.testing.assert_allclose(T, orthogonal_map(a, np.sign(sign) * a, kind=kind), atol=1e-15)
    with pytest.raises(ValueError, match="degenerate input"):
        orthogonal_map(a, sign * a, kind=kind, degenerate="raise")


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales_do_not_underflow_or_overflow(scale: float) -> None:
    a, b = _pair(32, 5)
    a32 = torch.from_numpy((a * scale).astype(np.float32))
    b32 = torch.from_numpy((b * scale).astype(np.float32))
    T = orthogonal_map(a32, b32).double().numpy()
    np.testing.assert_allclose(T, reference.closed_form(a, b, kind="reflection"), atol=8 * EPS32)


def test_deterministic() -> None:
    a, b = _pair(20, 6)
    x = torch.randn(100, 20, dtype=torch.float64)
    for kind in KINDS:
        assert torch.equal(apply_orthogonal_map(x, a, b, kind=kind), apply_orthogonal_map(x, a, b, kind=kind))


# --- batching, dtypes, out= ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_batched_pairs_match_loop(kind: str) -> None:
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((4, 3, 6)), rng.standard_normal((4, 3, 6))
    T = orthogonal_map(a, b, kind=kind)
    assert T.shape == (4, 3, 6, 6)
    x = rng.standard_normal((4, 3, 6))
    y = apply_orthogonal_map(x, a, b, kind=kind)
    xs = rng.standard_normal((4, 3, 5, 6))  # several vectors per pair: a[..., None, :] broadcasts
    ys = apply_orthogonal_map(xs, a[:, :, None, :], b[:, :, None, :], kind=kind)
    for i in range(4):
        for j in range(3):
            ref = reference.closed_form(a[i, j], b[i, j], kind=kind)
            np.testing.assert_allclose(T[i, j], ref, atol=1e-13)
            np.testing.assert_allclose(y[i, j], ref @ x[i, j], atol=1e-13)
            np.testing.assert_allclose(ys[i, j], xs[i, j] @ ref.T, atol=1e-13)


def test_b_broadcasts_against_a() -> None:
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((5, 8)), rng.standard_normal(8)
    T = orthogonal_map(a, b)
    for i in range(5):
        np.testing.assert_allclose(T[i], reference.closed_form(a[i], b, kind="reflection"), atol=1e-13)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_output_keeps_x_dtype(dtype: torch.dtype, tol: float) -> None:
    a, b = _pair(32, 12)
    x = torch.randn(50, 32, dtype=torch.float64)
    expected = x.numpy() @ reference.closed_form(a, b, kind="rotation").T
    y = apply_orthogonal_map(x.to(dtype), a, b, kind="rotation")
    assert y.dtype == dtype
    scale = np.abs(expected).max()
    assert np.abs(y.double().numpy() - expected).max() <= tol * scale


def test_numpy_float32_in_numpy_float32_out() -> None:
    a, b = _pair(8, 13)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    y = apply_orthogonal_map(x, a.astype(np.float32), b.astype(np.float32))
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    T = orthogonal_map(a.astype(np.float32), b.astype(np.float32))
    assert isinstance(T, np.ndarray) and T.dtype == np.float32


@pytest.mark.parametrize("kind", KINDS)
def test_out_and_in_place(kind: str) -> None:
    a, b = _pair(16, 14)
    x = torch.randn(40, 16, dtype=torch.float64)
    expected = apply_orthogonal_map(x, a, b, kind=kind)
    out = torch.full_like(x, float("nan"))
    assert apply_orthogonal_map(x, a, b, kind=kind, out=out) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    strided = torch.full((40, 32), float("nan"), dtype=torch.float64)[:, ::2]
    apply_orthogonal_map(x, a, b, kind=kind, out=strided)
    torch.testing.assert_close(strided, expected, rtol=0, atol=1e-14)
    inplace = x.clone()
    apply_orthogonal_map(inplace, a, b, kind=kind, out=inplace)
    torch.testing.assert_close(inplace, expected, rtol=0, atol=1e-14)
    x_np = x.numpy().copy()
    out_np = np.empty_like(x_np)
    assert apply_orthogonal_map(x_np, a, b, kind=kind, out=out_np) is out_np
    np.testing.assert_allclose(out_np, expected.numpy(), atol=1e-14)


def test_large_cpu_output_uses_the_huge_page_allocation_and_is_correct() -> None:
    a, b = _pair(256, 15)
    x = torch.randn(40_000, 256)  # 41 MB: above the huge-page threshold
    y = apply_orthogonal_map(x, a, b)
    T = torch.from_numpy(reference.closed_form(a, b, kind="reflection")).float()
    torch.testing.assert_close(y, x @ T.T, rtol=0, atol=2e-5)


# --- autograd ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_matrix(kind: str) -> None:
    a, b = (torch.from_numpy(v).requires_grad_() for v in _pair(5, 16))
    assert torch.autograd.gradcheck(lambda a, b: orthogonal_map(a, b, kind=kind), (a, b))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck_apply(kind: str, inverse: bool) -> None:
    a, b = (torch.from_numpy(v).requires_grad_() for v in _pair(6, 17))
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a, b: apply_orthogonal_map(x, a, b, kind=kind, inverse=inverse), (x, a, b)
    )


def test_gradient_matches_reference_direction() -> None:
    """d/dx of sum(T x) is Tᵀ 1: checks the backward against the reference matrix."""
    a, b = _pair(7, 18)
    x = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    apply_orthogonal_map(x, a, b, kind="rotation").sum().backward()
    T = reference.closed_form(a, b, kind="rotation")
    np.testing.assert_allclose(x.grad.numpy(), np.tile(T.sum(axis=0), (2, 1)), atol=1e-13)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: orthogonal_map([1.0, 0.0], [0.0, 1.0], kind="householder"), r"kind='householder'.*'reflection'"),
        (lambda: orthogonal_map([1.0, 0.0], [0.0, 1.0], degenerate="ignore"), r"degenerate='ignore'"),
        (lambda: orthogonal_map([1.0, 0.0], [0.0, 1.0, 0.0]), r"same last dimension"),
        (lambda: orthogonal_map([0.0, 0.0], [0.0, 1.0]), r"a has zero norm"),
        (lambda: orthogonal_map([1.0, float("nan")], [0.0, 1.0]), r"a contains 1 non-finite"),
        (lambda: orthogonal_map([1.0, 0.0], [0.0, float("inf")]), r"b contains 1 non-finite"),
        (lambda: orthogonal_map([3.0, 4.0], [0.0, 1.0], normalize=False), r"a is not unit length.*normalize=False"),
        (lambda: orthogonal_map(1.0, 1.0), r"at least one dimension"),
        (lambda: orthogonal_map(["x", "y"], [0.0, 1.0]), r"a must hold real numbers"),
        (lambda: orthogonal_map(np.ones((3, 2)), np.ones((4, 2))), r"must broadcast"),
        (
            lambda: apply_orthogonal_map(np.ones((3, 4)), [1.0, 0.0], [0.0, 1.0]),
            r"last dimension d = x.shape\[-1\] = 4",
        ),
        (
            lambda: apply_orthogonal_map(np.ones((3, 2)), [1.0, 0.0], [0.0, 1.0], out=np.ones((2, 2))),
            r"out must have shape \(3, 2\)",
        ),
        (
            lambda: apply_orthogonal_map(
                torch.ones(3, 2), [1.0, 0.0], [0.0, 1.0], out=torch.ones(3, 2, dtype=torch.float64)
            ),
            r"dtype torch.float32",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_normalize_false_accepts_unit_vectors_and_matches_normalize_true() -> None:
    a, b = (reference.unit(v) for v in _pair(12, 19))
    np.testing.assert_allclose(orthogonal_map(a, b, normalize=False), orthogonal_map(a, b), atol=1e-15)
    np.testing.assert_allclose(orthogonal_map(3 * a, 0.5 * b), orthogonal_map(a, b), atol=1e-15)


def test_out_with_autograd_is_rejected() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="out= is not differentiable"):
        apply_orthogonal_map(x, [1.0, 0.0], [0.0, 1.0], out=torch.empty(3, 2))


# --- GPU -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_cuda_apply_matches_reference(kind: str, dtype: torch.dtype, tol: float) -> None:
    a, b = _pair(768, 20)
    x = torch.randn(4096, 768, dtype=torch.float64)
    expected = x.numpy() @ reference.closed_form(a, b, kind=kind).T
    y = apply_orthogonal_map(x.to("cuda", dtype), torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda(), kind=kind)
    assert y.device.type == "cuda" and y.dtype == dtype
    assert np.abs(y.double().cpu().numpy() - expected).max() <= tol * np.abs(expected).max()


def test_no_grad_with_leaf_that_requires_grad() -> None:
    a, b = _pair(8, 21)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y = apply_orthogonal_map(x, a, b)
    assert not y.requires_grad
    np.testing.assert_allclose(
        y.numpy(), x.detach().numpy() @ reference.closed_form(a, b, kind="reflection").T, atol=1e-13
    )
