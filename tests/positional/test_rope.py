"""RoPE fast paths against the float64 matrix-exponential reference, layouts, gradients, errors."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.positional import _native, reference, scaling
from kexue.positional import rope as rope_module
from kexue.positional.rope import (
    Layout,
    RotaryEmbedding,
    apply_rotary,
    apply_rotary_qk,
    axial_frequencies,
    convert_layout,
    grid_positions,
    layout_permutation,
    mixed_frequencies,
    rope_frequencies,
)

BACKENDS = ["native", "torch"] if _native.available() else ["torch"]


def test_native_kernel_builds_here() -> None:
    # the development and CI machines have a C compiler; the fast path must be exercised there
    assert _native.available()


def _reference_rows(
    x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, layout: Layout, inverse: bool = False
) -> np.ndarray:
    flat_x = x.double().reshape(-1, x.shape[-1]).numpy()
    flat_p = positions.double().reshape(-1, freqs.shape[0]).numpy()
    rows = reference.apply_reference(flat_x, flat_p, freqs.double().numpy(), layout=layout, inverse=inverse)
    return rows.reshape(x.shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize(("axes", "frequencies"), [(1, "axial"), (2, "axial"), (3, "axial"), (2, "mixed")])
def test_float64_matches_matrix_exponential(backend: str, layout: str, axes: int, frequencies: str) -> None:
    g = torch.Generator().manual_seed(axes)
    rope = RotaryEmbedding(
        12 if axes == 3 else 16,
        axes=axes,
        frequencies=frequencies,
        layout=layout,
        angle_dtype=torch.float64,
        backend=backend,
    )
    x = torch.randn(7, rope.dim, dtype=torch.float64, generator=g)
    positions = torch.randn(7, axes, dtype=torch.float64, generator=g) * 20  # fractional and negative
    p_arg = positions[:, 0] if axes == 1 else positions
    got = rope(x, p_arg)
    want = _reference_rows(x, positions, rope.freqs, layout)
    assert np.abs(got.numpy() - want).max() < 1e-11  # scipy's expm itself errs by ~1e-12 at angles ~60 rad
    back = rope(got, p_arg, inverse=True)
    assert torch.allclose(back, x, atol=1e-13, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_rotary_leaves_the_tail_unchanged(backend: str) -> None:
    rope = RotaryEmbedding(16, rotary_dim=6, angle_dtype=torch.float64, backend=backend)
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    y = rope(x)
    assert torch.equal(y[..., 6:], x[..., 6:])
    want = _reference_rows(
        x[..., :6].contiguous(), torch.arange(5.0).expand(2, 3, 5).reshape(-1, 1), rope.freqs, "half"
    )
    assert np.abs(y[..., :6].numpy() - want).max() < 1e-12


def test_one_d_is_the_roformer_formula() -> None:
    # the literal LLaMA/HF construction: θ_i = base^(−2i/d), cat(freqs, freqs), rotate_half
    d, t = 64, 50
    x = torch.randn(t, d, dtype=torch.float64)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    emb = torch.cat([torch.outer(torch.arange(t, dtype=torch.float64), inv)] * 2, dim=-1)
    rotated_half = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)
    want = x * emb.cos() + rotated_half * emb.sin()
    got = RotaryEmbedding(d, angle_dtype=torch.float64)(x)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    assert torch.allclose(rope_frequencies(d), inv, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_error_is_within_twice_the_plain_reference(dtype: torch.dtype, backend: str) -> None:
    # flash-attention's rule: error vs float64 ≤ 2 × the error of the same-dtype plain formula
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(2, 4, 300, 64, dtype=torch.float64, generator=g)
    x = x64.to(dtype)
    rope = RotaryEmbedding(64, backend=backend)
    exact = RotaryEmbedding(64, angle_dtype=torch.float64, backend="torch")(x.double())
    ours = (rope(x).double() - exact).abs().max()
    cos, sin = rope.cos_sin(torch.arange(300))
    c, s = cos.to(dtype), sin.to(dtype)
    plain = reference.plain_half_rotation(x, c, s)
    plain_err = (plain.double() - exact).abs().max()
    assert ours <= 2 * plain_err
    assert ours > 0 or dtype == torch.float32


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_native_equals_torch_backend_bitwise_in_float32(layout: str) -> None:
    if not _native.available():
        pytest.skip("no C compiler")
    x = torch.randn(3, 4, 33, 24)
    cos, sin = RotaryEmbedding(24, rotary_dim=20).cos_sin(torch.arange(33))
    a = apply_rotary(x, cos, sin, layout=layout, backend="native")
    b = apply_rotary(x, cos, sin, layout=layout, backend="torch")
    assert torch.allclose(a, b, atol=2e-6, rtol=0)


def test_strided_views_out_and_in_place() -> None:
    x = torch.randn(2, 10, 4, 32).transpose(1, 2)  # (B, H, T, D) view of (B, T, H, D)
    cos, sin = RotaryEmbedding(32).cos_sin(torch.arange(10))
    want = apply_rotary(x.contiguous(), cos, sin, backend="torch")
    assert torch.allclose(apply_rotary(x, cos, sin), want, atol=1e-6)
    out = torch.full_like(want, float("nan"))
    assert apply_rotary(x, cos, sin, out=out) is out
    assert torch.allclose(out, want, atol=1e-6)
    y = x.contiguous()
    apply_rotary(y, cos, sin, out=y)
    assert torch.allclose(y, want, atol=1e-6)


def test_offset_matches_positions_and_kv_cache_decoding() -> None:
    rope = RotaryEmbedding(32)
    x = torch.randn(2, 4, 7, 32)
    full = rope(x, offset=0)
    tail = rope(x[..., 5:, :], offset=5)  # the two newest tokens of a KV cache
    assert torch.allclose(full[..., 5:, :], tail, atol=1e-6)
    assert torch.allclose(rope(x, torch.arange(100, 107)), rope(x, offset=100), atol=1e-6)
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 7, 8, 9]])  # per-sequence position ids (left padding)
    y = rope(x, ids)
    assert torch.allclose(y[1], rope(x[1:], offset=3)[0], atol=1e-6)
    assert torch.allclose(y[0], full[0], atol=1e-6)


def test_cache_grows_and_angles_are_float32_for_bfloat16_models() -> None:
    rope = RotaryEmbedding(64)
    x = torch.randn(1, 1, 4, 64, dtype=torch.bfloat16)
    rope(x, offset=10_000)
    cos, _, factor = rope._table
    assert factor == 1.0
    assert cos.dtype == torch.float32 and cos.shape[0] >= 10_004
    # float32 angles at position 10,000: a bfloat16 angle would be off by up to 32 rad
    want = np.cos(10_000 * rope_frequencies(64).numpy())
    assert np.abs(rope.cos_sin(torch.tensor([10_000]))[0][0].double().numpy() - want).max() < 2e-3


def test_linear_and_ntk_scaling() -> None:
    base = rope_frequencies(64)
    linear = RotaryEmbedding(64, scaling="linear", factor=4.0, angle_dtype=torch.float64)
    assert torch.allclose(linear.freqs[0], base / 4)
    ntk = RotaryEmbedding(64, scaling="ntk", factor=4.0, angle_dtype=torch.float64)
    f = ntk.freqs[0]
    assert f[0] == 1.0  # highest frequency kept
    assert torch.allclose(f[-1], base[-1] / 4, rtol=1e-12)  # lowest stretched by the factor
    assert torch.allclose(f, rope_frequencies(64, base=10000 * 4 ** (64 / 62)))


def test_axial_split_and_grid() -> None:
    f = axial_frequencies(24, 2, split=[4, 8])
    assert f.shape == (2, 12)
    assert torch.count_nonzero(f[0, 4:]) == 0 and torch.count_nonzero(f[1, :4]) == 0
    assert torch.allclose(f[1, 4:], rope_frequencies(16))
    pos = grid_positions(2, 3)
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    # 2-D RoPE with y = 0 is the 1-D RoPE on the x block and the identity on the y block
    rope2 = RotaryEmbedding(16, axes=2, angle_dtype=torch.float64)
    rope1 = RotaryEmbedding(8, angle_dtype=torch.float64)
    x = torch.randn(5, 16, dtype=torch.float64)
    t = torch.arange(5.0)
    y = rope2(x, torch.stack([t, torch.zeros(5)], -1))
    halves = torch.cat([x[:, 0:4], x[:, 8:12]], -1)  # the x-axis pairs (j, j + 8), j < 4
    y1 = rope1(halves, t)
    assert torch.allclose(torch.cat([y[:, 0:4], y[:, 8:12]], -1), y1, atol=1e-13)
    assert torch.equal(torch.cat([y[:, 4:8], y[:, 12:16]], -1), torch.cat([x[:, 4:8], x[:, 12:16]], -1))


def test_mixed_per_head_frequencies() -> None:
    rope = RotaryEmbedding(16, axes=2, frequencies="mixed", num_heads=3, angle_dtype=torch.float64)
    assert rope.freqs.shape == (3, 2, 8)
    x = torch.randn(2, 3, 6, 16, dtype=torch.float64)
    pos = grid_positions(2, 3, dtype=torch.float64)
    y = rope(x, pos)
    for h in range(3):
        want = _reference_rows(x[:, h].reshape(-1, 16), pos.repeat(2, 1), rope.freqs[h], "half")
        assert np.abs(y[:, h].reshape(-1, 16).numpy() - want).max() < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_gradcheck_x_cos_sin(backend: str, layout: str) -> None:
    x = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    cos = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    sin = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    for inverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, c, s: apply_rotary(a, c, s, layout=layout, inverse=inverse, backend=backend),  # noqa: B023 -- called at once
            (x, cos, sin),
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_learnable_frequencies_receive_the_right_gradient(backend: str) -> None:
    rope = RotaryEmbedding(8, axes=2, frequencies="mixed", learnable=True, angle_dtype=torch.float64, backend=backend)
    rope.freqs.data = rope.freqs.data.double()
    x = torch.randn(4, 8, dtype=torch.float64)
    pos = torch.randn(4, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: _with_freqs(rope, f)(x, pos), (rope.freqs.detach().clone().requires_grad_(),)
    )
    rope(x, pos).square().sum().backward()
    assert rope.freqs.grad is not None and rope.freqs.grad.abs().sum() > 0


def _with_freqs(rope: RotaryEmbedding, freqs: torch.Tensor) -> RotaryEmbedding:
    clone = RotaryEmbedding(
        rope.dim, axes=rope.axes, frequencies="mixed", learnable=True, angle_dtype=torch.float64, backend=rope.backend
    )
    del clone.freqs
    clone.freqs = freqs  # a plain tensor attribute carrying the gradcheck input
    return clone


@settings(max_examples=40, deadline=None)
@given(
    axes=st.integers(1, 3),
    pairs=st.integers(1, 4),
    p1=st.lists(st.floats(-50, 50), min_size=3, max_size=3),
    p2=st.lists(st.floats(-50, 50), min_size=3, max_size=3),
    layout=st.sampled_from(["half", "interleaved"]),
)
def test_relativity_and_orthogonality_property(
    axes: int, pairs: int, p1: list[float], p2: list[float], layout: str
) -> None:
    rope = RotaryEmbedding(2 * pairs * axes, axes=axes, angle_dtype=torch.float64, layout=layout, backend="torch")
    eye = torch.eye(rope.dim, dtype=torch.float64)
    a, b = torch.tensor(p1[:axes], dtype=torch.float64), torch.tensor(p2[:axes], dtype=torch.float64)

    def matrix(p: torch.Tensor) -> torch.Tensor:  # columns R e_i: rows of rope(eye) are (R e_i)ᵀ
        arg = p.expand(rope.dim, axes) if axes > 1 else p.expand(rope.dim)
        return rope(eye, arg).T

    ra, rb = matrix(a), matrix(b)
    assert torch.allclose(ra.T @ ra, eye, atol=1e-13)
    assert torch.allclose(ra.T @ rb, matrix(b - a), atol=1e-11)


def test_layout_permutation_roundtrip_and_partial() -> None:
    p = layout_permutation(8, source="interleaved", target="half")
    assert p.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    back = layout_permutation(8, source="half", target="interleaved")
    assert torch.equal(p[back], torch.arange(8))
    assert layout_permutation(8, source="half", target="interleaved", rotary_dim=4).tolist() == [0, 2, 1, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("rotary_dim", [None, 8])
def test_convert_layout_gives_equal_attention_scores(rotary_dim: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    hidden, heads, head_dim, t = 48, 3, 16, 9
    wq, wk = torch.randn(heads * head_dim, hidden, generator=g), torch.randn(heads * head_dim, hidden, generator=g)
    h = torch.randn(t, hidden, generator=g)

    def scores(wq: torch.Tensor, wk: torch.Tensor, layout: str) -> torch.Tensor:
        rope = RotaryEmbedding(head_dim, rotary_dim=rotary_dim, layout=layout, angle_dtype=torch.float64)
        q = (h.double() @ wq.double().T).view(t, heads, head_dim).transpose(0, 1)
        k = (h.double() @ wk.double().T).view(t, heads, head_dim).transpose(0, 1)
        return rope(q) @ rope(k).transpose(-1, -2)

    want = scores(wq, wk, "interleaved")
    kw = dict(source="interleaved", target="half", rotary_dim=rotary_dim)
    got = scores(convert_layout(wq, heads, **kw), convert_layout(wk, heads, **kw), "half")
    assert torch.allclose(got, want, atol=1e-10)
    assert not torch.allclose(scores(wq, wk, "half"), want, atol=1e-3)  # unconverted weights differ


def test_convert_layout_against_transformers_llama_rope() -> None:
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    heads, head_dim, hidden, t = 2, 8, 16, 6
    wq = torch.randn(heads * head_dim, hidden, dtype=torch.float64)
    wk = torch.randn(heads * head_dim, hidden, dtype=torch.float64)
    h = torch.randn(1, t, hidden, dtype=torch.float64)
    ours = RotaryEmbedding(head_dim, layout="interleaved", angle_dtype=torch.float64)
    q = (h @ wq.T).view(1, t, heads, head_dim).transpose(1, 2)
    k = (h @ wk.T).view(1, t, heads, head_dim).transpose(1, 2)
    want = ours(q) @ ours(k).transpose(-1, -2)
    wq2, wk2 = (convert_layout(w, heads, source="interleaved", target="half") for w in (wq, wk))
    q2 = (h @ wq2.T).view(1, t, heads, head_dim).transpose(1, 2)
    k2 = (h @ wk2.T).view(1, t, heads, head_dim).transpose(1, 2)
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    emb = torch.cat([torch.outer(torch.arange(t, dtype=torch.float64), inv)] * 2, -1)[None]
    qe, ke = llama.apply_rotary_pos_emb(q2, k2, emb.cos(), emb.sin())
    assert torch.allclose(qe @ ke.transpose(-1, -2), want, atol=1e-10)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: apply_rotary(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)), "HF's duplicated"),
        (lambda: apply_rotary(torch.randn(4, 8), torch.randn(5, 4), torch.randn(5, 4)), "must broadcast"),
        (lambda: apply_rotary(torch.randn(4, 8), torch.randn(4, 4), torch.randn(4, 3)), "same shape"),
        (
            lambda: apply_rotary(torch.randn(4, 8), torch.randn(4, 4), torch.randn(4, 4), layout="pairs"),
            "layout='pairs'",
        ),
        (
            lambda: apply_rotary(torch.randn(4, 8), torch.randn(4, 4), torch.randn(4, 4), out=torch.empty(4, 9)),
            "out must match",
        ),
        (
            lambda: apply_rotary(
                torch.randn(4, 8, requires_grad=True), torch.randn(4, 4), torch.randn(4, 4), out=torch.empty(4, 8)
            ),
            "out= is not supported",
        ),
        (lambda: RotaryEmbedding(7), "dim=7"),
        (lambda: RotaryEmbedding(8, rotary_dim=10), "must not exceed"),
        (lambda: RotaryEmbedding(12, axes=2, split=[2, 2]), "split="),
        (lambda: RotaryEmbedding(12, axes=4), "do not split evenly"),
        (lambda: RotaryEmbedding(8, base=1.0), "base=1.0"),
        (lambda: RotaryEmbedding(8, scaling="yarn"), "scaling='yarn'"),
        (lambda: RotaryEmbedding(8)(torch.randn(3, 8), torch.tensor([0.0, float("nan"), 1.0])), "non-finite"),
        (lambda: RotaryEmbedding(8, axes=2)(torch.randn(3, 8)), "positions are required"),
        (lambda: RotaryEmbedding(8, axes=2)(torch.randn(3, 8), torch.zeros(3, 3)), r"shape \(T, 2\)"),
        (lambda: RotaryEmbedding(8)(torch.randn(3, 8), torch.arange(4)), "T=3"),
        (lambda: RotaryEmbedding(8)(torch.randn(3, 8), offset=-1), "offset=-1"),
        (
            lambda: RotaryEmbedding(8)(torch.randn(2, 3, 8), offset=torch.tensor([0, 1, 2])),
            r"one per sequence \(x.shape\[0\]=2\)",
        ),
        (lambda: RotaryEmbedding(8)(torch.randn(2, 3, 8), offset=torch.tensor([0.0, 1.0])), "1-D integers"),
        (lambda: RotaryEmbedding(8)(torch.randn(2, 3, 8), offset=torch.tensor([0, -4])), "minimum -4"),
        (
            lambda: apply_rotary_qk(
                torch.randn(4, 8), torch.randn(4, 8).double(), torch.randn(4, 4), torch.randn(4, 4)
            ),
            "share a dtype",
        ),
        (
            lambda: apply_rotary_qk(
                torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 4), torch.randn(4, 4), out=torch.empty(4, 8)
            ),
            "out must be a pair",
        ),
        (
            lambda: apply_rotary_qk(torch.randn(4, 8), torch.randn(2, 8), torch.randn(4, 4), torch.randn(4, 4)),
            "must broadcast",
        ),
        (
            lambda: apply_rotary_qk(
                torch.randn(4, 8),
                torch.randn(4, 8),
                torch.randn(4, 4),
                torch.randn(4, 4),
                out=(torch.empty(4, 8), torch.empty(4, 6)),
            ),
            r"out\[1\] must match k",
        ),
        (
            lambda: convert_layout(torch.randn(10, 4), 3, source="half", target="interleaved"),
            "must split into num_heads=3 heads",
        ),
    ],
)
def test_errors_name_the_argument(call, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_native_backend_rejects_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="backend='native'"):
        apply_rotary(torch.randn(*([1] * 10), 4), torch.randn(2), torch.randn(2), backend="native")


def test_fractional_cos_sin_are_computed_not_cached() -> None:
    rope = RotaryEmbedding(8, angle_dtype=torch.float64)
    cos, _ = rope.cos_sin(torch.tensor([0.5, 1.5]))
    assert torch.allclose(cos, torch.cos(torch.tensor([0.5, 1.5], dtype=torch.float64)[:, None] * rope_frequencies(8)))
    assert rope._table is None


def test_mixed_frequencies_are_seeded_and_not_parallel() -> None:
    a = mixed_frequencies(16, 2, generator=torch.Generator().manual_seed(1))
    b = mixed_frequencies(16, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.linalg.matrix_rank(a) == 2
    assert torch.allclose(a.norm(dim=0), rope_frequencies(16, base=100.0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_torch_path_matches_reference(dtype: torch.dtype) -> None:
    rope = RotaryEmbedding(64, axes=2).cuda()
    x = torch.randn(2, 4, 64, 64, device="cuda").to(dtype)
    pos = grid_positions(8, 8, device="cuda")
    got = rope(x, pos)
    assert got.device.type == "cuda" and got.dtype == dtype
    exact = RotaryEmbedding(64, axes=2, angle_dtype=torch.float64, backend="torch")(x.double().cpu(), pos.cpu())
    cos, sin = rope.cos_sin(pos)
    c, s = cos.to(dtype), sin.to(dtype)
    plain = reference.plain_half_rotation(x, c, s)
    assert (got.double().cpu() - exact).abs().max() <= 2 * (plain.double().cpu() - exact).abs().max() + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_shapes(backend: str) -> None:
    c, s = torch.randn(4), torch.randn(4)
    one = torch.randn(8)  # a single vector, no leading dimensions
    assert torch.allclose(apply_rotary(one, c, s, backend=backend), apply_rotary(one, c, s, backend="torch"), atol=1e-6)
    assert apply_rotary(torch.randn(0, 3, 8), torch.randn(3, 4), torch.randn(3, 4), backend=backend).shape == (0, 3, 8)
    strided = torch.randn(8, 4).t()  # last dimension not contiguous
    assert torch.allclose(
        apply_rotary(strided, c, s, backend=backend),
        apply_rotary(strided.contiguous(), c, s, backend="torch"),
        atol=1e-6,
    )


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=4),
    pairs=st.integers(1, 9),
    extra=st.integers(0, 5),
    layout=st.sampled_from(["half", "interleaved"]),
    broadcast=st.lists(st.booleans(), min_size=4, max_size=4),
    inverse=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_native_kernel_property(
    lead: list[int], pairs: int, extra: int, layout: str, broadcast: list[bool], inverse: bool, dtype: torch.dtype
) -> None:
    # any leading shape, partial rotary, cos/sin broadcast over any subset of leading dims
    if not _native.available():
        pytest.skip("no C compiler")
    x = torch.randn(*lead, 2 * pairs + 2 * extra, dtype=torch.float64)
    table_shape = [1 if b else n for n, b in zip(lead, broadcast, strict=False)] + [pairs]
    cos, sin = torch.randn(table_shape, dtype=torch.float64), torch.randn(table_shape, dtype=torch.float64)
    want = apply_rotary(x, cos, sin, layout=layout, inverse=inverse, backend="torch")
    got = apply_rotary(x.to(dtype), cos, sin, layout=layout, inverse=inverse, backend="native")
    assert got.dtype == dtype
    assert torch.allclose(
        got.double(), want, atol=1e-12 if dtype == torch.float64 else 5e-6, rtol=1e-5 if dtype == torch.float32 else 0
    )


QK_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", QK_DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_fused_qk_equals_two_calls_with_gqa_views_and_in_place(dtype: torch.dtype, backend: str, layout: str) -> None:
    g = torch.Generator().manual_seed(11)
    # HF's layout: (B, T, H, D) projections viewed as (B, H, T, D); 8 query heads, 2 key heads;
    # partial rotary (24 of 32 pairs), per-sequence positions (B, 1, T, R/2)
    q = torch.randn(2, 9, 8, 64, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(2, 9, 2, 64, generator=g).to(dtype).transpose(1, 2)
    rope = RotaryEmbedding(64, rotary_dim=48)
    cos, sin = rope.cos_sin(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [40, 41, 42, 43, 44, 45, 46, 47, 48]]))
    cos, sin = cos[:, None], sin[:, None]
    want_q = apply_rotary(q, cos, sin, layout=layout, backend=backend)
    want_k = apply_rotary(k, cos, sin, layout=layout, backend=backend)
    got_q, got_k = apply_rotary_qk(q, k, cos, sin, layout=layout, backend=backend)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    qq, kk = q.clone(), k.clone()
    assert all(
        a is b
        for a, b in zip(
            apply_rotary_qk(qq, kk, cos, sin, layout=layout, backend=backend, out=(qq, kk)), (qq, kk), strict=True
        )
    )
    assert torch.equal(qq, want_q) and torch.equal(kk, want_k)
    back = apply_rotary_qk(qq, kk, cos, sin, layout=layout, backend=backend, inverse=True)
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 5e-2  # float32 angles: cos² + sin² = 1 ± 1e-7
    torch.testing.assert_close(back[0], q, rtol=tol, atol=tol)
    torch.testing.assert_close(back[1], k, rtol=tol, atol=tol)


def test_fused_qk_is_one_kernel_call_and_matches_the_reference(monkeypatch) -> None:
    if not _native.available():
        pytest.skip("no C compiler")
    calls = []
    real = _native.rotate_many
    monkeypatch.setattr(_native, "rotate_many", lambda jobs, **kw: calls.append(len(jobs)) or real(jobs, **kw))
    q, k = torch.randn(1, 4, 6, 16, dtype=torch.float64), torch.randn(1, 1, 6, 16, dtype=torch.float64)
    rope = RotaryEmbedding(16, angle_dtype=torch.float64)
    cos, sin = rope.cos_sin(torch.arange(6))
    got_q, got_k = apply_rotary_qk(q, k, cos, sin, backend="native")
    assert calls == [2]
    positions = torch.arange(6, dtype=torch.float64)[:, None]
    for got, x in ((got_q, q), (got_k, k)):
        want = _reference_rows(x, positions.expand(*x.shape[:-1], 1), rope.freqs, "half")
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_fused_qk_gradients_equal_two_calls() -> None:
    q = torch.randn(2, 4, 5, 16, requires_grad=True)
    k = torch.randn(2, 2, 5, 16, requires_grad=True)
    cos, sin = RotaryEmbedding(16).cos_sin(torch.arange(5))
    a, b = apply_rotary_qk(q, k, cos, sin)
    (a.square().sum() + 3 * b.sum()).backward()
    grads = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    (apply_rotary(q, cos, sin).square().sum() + 3 * apply_rotary(k, cos, sin).sum()).backward()
    assert torch.equal(grads[0], q.grad) and torch.equal(grads[1], k.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sequence_offsets_are_one_call_equal_to_each_sequence_alone(backend: str) -> None:
    # batched decoding with KV caches of different lengths: sequence b's new tokens start at offset[b]
    rope = RotaryEmbedding(32, backend=backend)
    x = torch.randn(3, 4, 2, 32)
    offset = torch.tensor([0, 17, 300])  # 300 is past the cached table: it must grow
    got = rope(x, offset=offset)
    for b in range(3):
        assert torch.equal(got[b : b + 1], rope(x[b : b + 1], offset=int(offset[b])))
    positions = offset[:, None] + torch.arange(2)
    exact = _reference_rows(x, positions[:, None, :, None].expand(3, 4, 2, 1), rope.freqs, "half")
    np.testing.assert_allclose(got.double().numpy(), exact, atol=2e-4)
    three_d = torch.randn(3, 2, 32)  # (B, T, D)
    assert torch.equal(rope(three_d, offset=offset)[2], rope(three_d[2:], offset=300)[0])


def test_float16_angles_at_long_positions_stay_float32_accurate() -> None:
    # fp16 models get float32 angles and float32 arithmetic: at positions near 60k the error is
    # below that of transformers' recipe (float32 angles, tables and products in fp16), and far
    # below angles computed in fp16, whose spacing there is 32 rad
    positions = torch.arange(60_000, 60_064)
    x = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(5)).half()
    rope = RotaryEmbedding(64)
    exact = RotaryEmbedding(64, angle_dtype=torch.float64, backend="torch")(x.double(), positions)
    error = (rope(x, positions).double() - exact).abs().max().item()
    cos, sin = rope.cos_sin(positions)
    hf_recipe = reference.plain_half_rotation(x, cos.half(), sin.half()).double()
    assert 0 < error <= (hf_recipe - exact).abs().max().item()
    angles16 = (positions.half()[:, None] * rope_frequencies(64).half()[None]).double()
    assert (angles16 - positions.double()[:, None] * rope_frequencies(64)[None]).abs().max() > 1


def test_the_torch_path_traces_under_compile_fullgraph() -> None:
    # GPU users get inductor's fused kernel: no graph break in apply_rotary, apply_rotary_qk or
    # RotaryEmbedding (with its cached table); "auto" takes the torch path while compiling
    torch._dynamo.reset()
    rope = RotaryEmbedding(32)
    q, k = torch.randn(2, 4, 16, 32), torch.randn(2, 2, 16, 32)
    cos, sin = rope.cos_sin(torch.arange(16))
    fn = torch.compile(lambda q, k, cos, sin: apply_rotary_qk(q, k, cos, sin), fullgraph=True, backend="inductor")
    got_q, got_k = fn(q, k, cos, sin)
    torch.testing.assert_close(got_q, apply_rotary(q, cos, sin), rtol=0, atol=1e-6)
    torch.testing.assert_close(got_k, apply_rotary(k, cos, sin), rtol=0, atol=1e-6)
    module = torch.compile(rope, fullgraph=True, backend="inductor")
    torch.testing.assert_close(module(q, offset=3), rope(q, offset=3), rtol=0, atol=1e-6)


def test_option_tuples_are_the_literal_types_and_the_registries() -> None:
    assert rope_module.LAYOUTS == get_args(rope_module.Layout) == ("half", "interleaved")
    assert rope_module.SCALINGS == get_args(rope_module.Scaling) == tuple(rope_module.ROPE_SCALINGS)
    assert rope_module.FREQUENCIES == ("axial", "mixed")
    assert set(rope_module.BACKENDS) == {"auto", "native", "torch"}
    assert scaling.ROPE_TYPE_NAMES == get_args(scaling.RopeType) == tuple(scaling.ROPE_TYPES)


def test_use_native_takes_the_tensors_and_an_op() -> None:
    x = torch.randn(2, 4, 8)
    assert not _native.use_native("torch", x, x, op="rotate_products")
    assert _native.use_native("native", x, x, op="rotate") == _native.available()
    with pytest.raises(ValueError, match="op='spin'"):
        _native.use_native("auto", x, op="spin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend='native'"):
        _native.use_native("native", x, x.to(torch.int32))  # every tensor must suit the kernel


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        rope_frequencies(8, 100.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        axial_frequencies(8, 2, 100.0)  # type: ignore[misc]
    assert torch.equal(rope_frequencies(8, base=100.0), axial_frequencies(8, 1, base=100.0)[0])
