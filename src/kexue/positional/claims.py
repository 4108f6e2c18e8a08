"""The articles' checks for ``kexue reproduce sinusoidal`` and ``kexue reproduce rope``.

Sinusoidal (kexue.fm/archives/8231): relativity of ⟨p_m, p_n⟩, its long-range decay, the
sum → integral limit, and the comparison of frequency schedules θ_t. RoPE
(kexue.fm/archives/8265, 8397): orthogonality, relativity (integer and fractional
positions), invertibility, 1-D as the special case, what flattening a grid and quaternions
break, the fast paths against ``exp(Σ p_k B_k)``, layout conversion, and a small ViT
experiment the article did not have.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np
import torch

from kexue._optional import require_extra
from kexue._shared import quieter
from kexue.positional import _native, reference, vit
from kexue.positional.mrope import mrope_frequencies, mrope_position_ids
from kexue.positional.rope import Backend, Frequencies, Layout, RotaryEmbedding, apply_rotary, convert_layout
from kexue.positional.scaling import (
    RopeParameters,
    RopeType,
    attention_decay,
    pair_analysis,
    rope_parameters,
    rope_parameters_from_config,
)
from kexue.positional.sinusoidal import (
    ThetaSchedule,
    exponential_schedule,
    integral_approximation,
    power_schedule,
    relative_inner_products,
    sinusoidal_table,
)
from kexue.report.claims import Article, ClaimContext, ClaimSuite, Headline, Table

SINUSOIDAL = ClaimSuite(
    "sinusoidal",
    Article(
        "Transformer upgrade road 1: tracing sinusoidal position encoding to its roots",
        "https://kexue.fm/archives/8231",
    ),
    headlines=(
        "decay.envelope",
        Headline("sum_to_integral", ("4096",), "relative gap of the sum to its integral at d = 4096"),
    ),
)
ROPE = ClaimSuite(
    "rope",
    Article(
        "Transformer upgrade road 2 and 4: rotary position embedding, in 1-D and 2-D", "https://kexue.fm/archives/8397"
    ),
    headlines=("relativity.", "vit.all_variants_learn"),
)

DIM = 128
USEFUL_RANGE = 4096  # distances checked for decay (a long context's worth)


def _dyadic_envelope(values: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Max |g| over the windows [2^j, 2^{j+1}) up to ``top`` (the envelope the article plots by eye)."""
    starts = 2 ** np.arange(int(np.log2(top)))
    return starts, np.array([np.abs(values[s : 2 * s]).max() for s in starts])


# --- sinusoidal ---------------------------------------------------------------------------------


@SINUSOIDAL.check
def relativity(ctx: ClaimContext) -> None:
    """⟨p_m, p_n⟩ = g(n − m) for integer and fractional positions."""
    rng = np.random.default_rng(ctx.seed)
    n = 2000 if ctx.full else 200
    for label, m, k in (
        ("integer", rng.integers(0, 10_000, n).astype(float), rng.integers(0, 10_000, n).astype(float)),
        ("fractional", rng.uniform(-5_000, 5_000, n), rng.uniform(-5_000, 5_000, n)),
    ):
        pm = sinusoidal_table(torch.from_numpy(m), DIM, dtype=torch.float64).numpy()
        pk = sinusoidal_table(torch.from_numpy(k), DIM, dtype=torch.float64).numpy()
        err = float(np.abs((pm * pk).sum(-1) - relative_inner_products(k - m, DIM)).max())
        ctx.claim(
            f"relativity.{label}",
            f"⟨p_m, p_n⟩ depends only on n − m ({label} positions, d = {DIM}, {n} pairs)",
            article_value="exact",
            measured=err,
            tolerance=1e-9,
            passed=err <= 1e-9,
        )


@SINUSOIDAL.check
def decay(ctx: ClaimContext) -> None:
    """The envelope of g(Δ) decreases over the useful range; where it stops decreasing."""
    import matplotlib.pyplot as plt  # optional extra: report

    top = 1 << 15
    delta = np.arange(top + 1, dtype=np.float64)
    g = relative_inner_products(delta, DIM)
    starts, env = _dyadic_envelope(g, top)
    useful = starts < USEFUL_RANGE
    decreasing = bool(np.all(np.diff(env[useful]) < 0))
    rises = starts[1:][np.diff(env) >= 0]
    first_rise = int(rises[0]) if len(rises) else None
    ctx.claim(
        "decay.envelope",
        f"max |⟨p_m, p_(m+Δ)⟩| over Δ ∈ [2^j, 2^(j+1)) decreases for Δ < {USEFUL_RANGE} (d = {DIM}, base 10000)",
        article_value="decays with |m − n|",
        measured=f"{env[0]:.1f} → {env[useful][-1]:.1f}",
        passed=decreasing,
        details=f"window maxima {', '.join(f'{v:.2f}' for v in env)} from Δ = {', '.join(map(str, starts.tolist()))}; "
        f"the envelope first stops decreasing at the window starting Δ = {first_rise}",
    )
    ctx.claim(
        "decay.limit",
        "beyond the useful range the envelope stops decreasing (oscillations of the lowest frequencies)",
        article_value="decay over the useful range only",
        measured=f"first non-decreasing window at Δ = {first_rise}",
        documented=True,
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    short = delta[:257]
    axes[0].plot(short, g[:257], label="Σ cos(Δ θ_i) (d = 128)")
    axes[0].plot(short, integral_approximation(short, DIM), "--", label="(d/2) ∫ cos(Δ θ_t) dt")
    axes[0].set(title="short range", xlabel="Δ = n − m", ylabel="⟨p_m, p_n⟩")
    axes[0].legend()
    axes[1].plot(delta[::8], g[::8], lw=0.5, label="sum")
    axes[1].plot(delta[::8], integral_approximation(delta[::8], DIM), lw=0.8, label="integral")
    axes[1].step(starts, env, where="post", color="k", label="window max |·|")
    axes[1].set(title="long range", xlabel="Δ", xscale="symlog")
    axes[1].legend()
    ctx.figure(
        "sinusoidal_decay",
        fig,
        "Inner products of sinusoidal encodings (d = 128, base 10000) against distance, with the integral "
        "approximation and the dyadic-window envelope.",
    )


@SINUSOIDAL.check
def sum_to_integral(ctx: ClaimContext) -> None:
    """The sum over frequencies approaches (d/2)∫ as d grows."""
    dims = (64, 128, 256, 512, 1024, 2048, 4096) + ((8192,) if ctx.full else ())
    delta = np.arange(0, 5000, dtype=np.float64)
    gaps = [
        float(np.abs(relative_inner_products(delta, d) - integral_approximation(delta, d)).max() / (d / 2))
        for d in dims
    ]
    ok = all(b < a for a, b in itertools.pairwise(gaps)) and gaps[-1] < 0.02
    ctx.claim(
        "sum_to_integral",
        "max over Δ < 5000 of |Σ − (d/2)∫| / (d/2) shrinks as d grows",
        article_value="Σ → (d/2)∫ as d → ∞",
        measured={str(d): round(gap, 5) for d, gap in zip(dims, gaps, strict=True)},
        tolerance="strictly decreasing, < 0.02 at the largest d",
        passed=ok,
    )


def _closed_form(base: float) -> Callable[[np.ndarray], np.ndarray]:
    """The exponential schedule's closed-form integral ``∫_0^1 cos(Δ base^(−t)) dt`` (it always has one)."""
    exact = exponential_schedule(base).exact
    if exact is None:
        raise RuntimeError("the exponential schedule lost its closed form")
    return exact


@SINUSOIDAL.check
def schedules(ctx: ClaimContext) -> None:
    """Compare θ_t choices: bases of the exponential and power laws."""
    import matplotlib.pyplot as plt  # optional extra: report

    delta = np.unique(np.round(np.logspace(0, 5, 600)))
    bases = (100.0, 1000.0, 10000.0, 100000.0)
    half_life: dict[str, float | None] = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for base in bases:
        curve = _closed_form(base)(delta)  # normalised: d/2 = 1
        axes[0].plot(delta, curve, label=f"θ_t = {base:g}^(-t)")
        below = delta[np.abs(curve) < 0.5]
        half_life[f"{base:g}"] = float(below[0]) if len(below) else None
    for alpha in (1.0, 2.0, 4.0):
        sched = power_schedule(alpha)
        numeric = ThetaSchedule(sched.name, sched.theta)
        axes[1].plot(
            delta[delta < 2000],
            integral_approximation(delta[delta < 2000], 2, schedule=numeric),
            label=f"θ_t = t^{alpha:g}",
        )
    axes[1].plot(delta[delta < 2000], _closed_form(10000)(delta[delta < 2000]), "k", label="θ_t = 10000^(-t)")
    for ax, title in zip(axes, ("exponential schedules", "power laws vs the Transformer's"), strict=True):
        ax.set(xscale="log", title=title, xlabel="Δ", ylabel="∫_0^1 cos(Δ θ_t) dt")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    ctx.figure(
        "sinusoidal_schedules",
        fig,
        "Normalised integral ∫cos(Δθ_t)dt for several frequency schedules: a larger base stretches the decay; "
        "power laws decay too, more slowly at short range.",
    )
    values = [v for v in (half_life[f"{b:g}"] for b in bases) if v is not None]
    ok = len(values) == len(bases) and all(b > a for a, b in itertools.pairwise(values))
    ctx.claim(
        "schedules.base_stretches_decay",
        "a larger base stretches the decay: first Δ with |∫| < 1/2 grows with the base",
        article_value="larger base, slower decay",
        measured=half_life,
        passed=ok,
    )
    power = {
        f"t^{a:g}": round(
            float(integral_approximation([100.0], 2, schedule=ThetaSchedule("n", power_schedule(a).theta))[0]), 4
        )
        for a in (1.0, 2.0, 4.0)
    }
    power["10000^(-t)"] = round(float(_closed_form(10000)(np.array([100.0]))[0]), 4)
    ctx.claim(
        "schedules.comparison",
        "normalised ∫cos(Δθ_t)dt at Δ = 100 for power laws and the exponential schedule",
        article_value="the article compares schedules graphically",
        measured=power,
        documented=True,
    )


# --- rope ---------------------------------------------------------------------------------------

_CONFIGS: dict[str, tuple[int, int, Frequencies]] = {  # name -> (dim, axes, frequencies)
    "1d": (16, 1, "axial"),
    "2d_axial": (16, 2, "axial"),
    "3d_axial": (24, 3, "axial"),
    "2d_mixed": (16, 2, "mixed"),
}


def _rope(name: str) -> RotaryEmbedding:
    """The float64 RotaryEmbedding of one of ``_CONFIGS``."""
    dim, axes, frequencies = _CONFIGS[name]
    return RotaryEmbedding(dim, axes=axes, frequencies=frequencies, angle_dtype=torch.float64)


def _matrix(rope: RotaryEmbedding, p: torch.Tensor) -> torch.Tensor:
    """R_p formed by the fast path: rows of rope(I) are (R e_i)ᵀ."""
    eye = torch.eye(rope.dim, dtype=torch.float64)
    arg = p.expand(rope.dim) if rope.axes == 1 else p.expand(rope.dim, rope.axes)
    return rope(eye, arg).T


def _positions(rng: np.random.Generator, n: int, axes: int, fractional: bool, span: int = 200) -> torch.Tensor:
    p = rng.uniform(-span, span, (n, axes)) if fractional else rng.integers(-span, span, (n, axes)).astype(float)
    return torch.from_numpy(p)


@ROPE.check
def orthogonality_and_relativity(ctx: ClaimContext) -> None:
    rng = np.random.default_rng(ctx.seed)
    n = 60 if ctx.full else 15
    for name in _CONFIGS:
        rope = _rope(name)
        squeeze = (lambda p: p[0]) if rope.axes == 1 else (lambda p: p)
        orth = 0.0
        for fractional in (False, True):
            rel = 0.0
            a, b = _positions(rng, n, rope.axes, fractional), _positions(rng, n, rope.axes, fractional)
            for pa, pb in zip(a, b, strict=True):
                ra, rb = _matrix(rope, squeeze(pa)), _matrix(rope, squeeze(pb))
                orth = max(orth, float((ra.T @ ra - torch.eye(rope.dim, dtype=torch.float64)).abs().max()))
                rel = max(rel, float((ra.T @ rb - _matrix(rope, squeeze(pb - pa))).abs().max()))
            kind = "fractional" if fractional else "integer"
            ctx.claim(
                f"relativity.{name}_{kind}",
                f"R_aᵀ R_b = R_(b−a) ({name}, {kind} positions in [−200, 200], {n} pairs)",
                article_value="exact",
                measured=rel,
                tolerance=1e-11,
                passed=rel <= 1e-11,
            )
        ctx.claim(
            f"orthogonality.{name}",
            f"R_pᵀ R_p = I ({name})",
            article_value="exact",
            measured=orth,
            tolerance=1e-13,
            passed=orth <= 1e-13,
        )


@ROPE.check
def invertibility(ctx: ClaimContext) -> None:
    rng = np.random.default_rng(ctx.seed + 1)
    for name in ("2d_axial", "3d_axial", "2d_mixed"):
        rope = _rope(name)
        err = 0.0
        for p in _positions(rng, 20, rope.axes, True, span=50):
            got = reference.recover_positions(_matrix(rope, p).numpy(), rope.freqs.numpy())
            err = max(err, float(np.abs(got - p.numpy()).max()))
        ctx.claim(
            f"invertibility.{name}",
            f"(x, y[, z]) recovered from R ({name}, fractional positions in [−50, 50]; R is periodic, so only "
            "within a range)",
            article_value="invertible",
            measured=err,
            tolerance=1e-8,
            passed=err <= 1e-8,
        )
    # the article's counterexample: one rotation by (x + y)θ is relative but loses (x, y)
    r10, r01 = (
        reference.rotation([1.0, 0.0], reference.generators(np.ones((2, 1)), 2)),
        reference.rotation([0.0, 1.0], reference.generators(np.ones((2, 1)), 2)),
    )
    ctx.claim(
        "invertibility.single_block_counterexample",
        "a single 2×2 block (rotation by (x + y)θ) cannot tell (1, 0) from (0, 1)",
        article_value="not invertible",
        measured=float(np.abs(r10 - r01).max()),
        documented=True,
    )


@ROPE.check
def one_d_special_case(ctx: ClaimContext) -> None:
    d, t = 64, 300
    x = torch.randn(t, d, dtype=torch.float64, generator=torch.Generator().manual_seed(ctx.seed))
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    emb = torch.cat([torch.outer(torch.arange(t, dtype=torch.float64), inv)] * 2, dim=-1)
    roformer = x * emb.cos() + torch.cat((-x[:, d // 2 :], x[:, : d // 2]), -1) * emb.sin()
    ours = RotaryEmbedding(d, angle_dtype=torch.float64)(x)
    err = float((ours - roformer).abs().max())
    gens = reference.generators(inv[None].numpy(), d)
    expm_err = max(
        float(np.abs(reference.rotation([n], gens) @ x[n].numpy() - ours[n].numpy()).max()) for n in (0, 1, 17, 299)
    )
    ctx.claim(
        "one_d.special_case",
        "axes = 1 is RoFormer/LLaMA RoPE (cos/sin formula) and exp(n B) with one generator",
        article_value="1-D RoPE is the special case",
        measured=max(err, expm_err),
        tolerance=1e-11,
        passed=max(err, expm_err) <= 1e-11,
    )


@ROPE.check
def flattened_grid(ctx: ClaimContext) -> None:
    h = w = 14
    flat = RotaryEmbedding(16, angle_dtype=torch.float64, base=100.0)
    axial = RotaryEmbedding(16, axes=2, angle_dtype=torch.float64, base=100.0)

    def flat_matrix(dx: float, dy: float) -> torch.Tensor:
        return _matrix(flat, torch.tensor([dx * w + dy], dtype=torch.float64)[0])

    aliased = float((flat_matrix(0, 1) - flat_matrix(1, -(w - 1))).abs().max())
    separated = float(
        (
            _matrix(axial, torch.tensor([0.0, 1.0], dtype=torch.float64))
            - _matrix(axial, torch.tensor([1.0, -(w - 1.0)], dtype=torch.float64))
        )
        .abs()
        .max()
    )
    ctx.claim(
        "flattened.neighbour_distances",
        f"flattening a {h}×{w} grid puts (x+1, y) at 1-D distance {w} and (x, y+1) at 1",
        article_value="distances h and 1",
        measured={"(x+1,y)": w, "(x,y+1)": 1},
        documented=True,
    )
    ctx.claim(
        "flattened.breaks_2d_relativity",
        f"flattened 1-D RoPE gives the 2-D offsets (0, 1) and (1, −{w - 1}) the same rotation; "
        "2-D axial keeps them apart",
        article_value="flattening gives the wrong geometry",
        measured={"flattened max |ΔR|": aliased, "axial max |ΔR|": separated},
        tolerance="flattened < 1e-12, axial > 0.1",
        passed=aliased < 1e-12 and separated > 0.1,
    )


@ROPE.check
def quaternion(ctx: ClaimContext) -> None:
    rng = np.random.default_rng(ctx.seed + 2)
    worst = orth = 0.0
    for _ in range(20):
        (x1, y1), (x2, y2) = rng.uniform(-3, 3, (2, 2))
        r1, r2 = reference.quaternion_rotation(x1, y1), reference.quaternion_rotation(x2, y2)
        orth = max(orth, float(np.abs(r1.T @ r1 - np.eye(4)).max()))
        worst = max(worst, float(np.abs(r1.T @ r2 - reference.quaternion_rotation(x2 - x1, y2 - y1)).max()))
    ctx.claim(
        "quaternion.breaks_relativity",
        "exp(xθ i + yθ j) on quaternions: R_1ᵀ R_2 ≠ R_(2−1) because i j ≠ j i (20 random pairs)",
        article_value="quaternions fail",
        measured={"max |R_1ᵀR_2 − R_(2−1)|": worst, "orthogonality error": orth},
        tolerance="relativity error > 1e-2",
        passed=worst > 1e-2,
    )


@ROPE.check
def fast_path(ctx: ClaimContext) -> None:
    g = torch.Generator().manual_seed(ctx.seed)
    x64 = torch.randn(2, 4, 257, 64, dtype=torch.float64, generator=g)
    pos = torch.arange(257)
    exact64 = RotaryEmbedding(64, angle_dtype=torch.float64, backend="torch")
    ref = reference.apply_reference(x64[0, 0].numpy(), pos.numpy()[:, None].astype(float), exact64.freqs.numpy())
    cos, sin = RotaryEmbedding(64).cos_sin(pos)  # float32 tables, as models use them
    low = {}  # dtype -> (x in that dtype, float64 truth for it, error of the plain same-dtype formula)
    for dtype in (torch.float32, torch.bfloat16):
        x = x64.to(dtype)
        truth = exact64(x.double())
        plain = reference.plain_half_rotation(x, cos.to(dtype), sin.to(dtype))
        low[dtype] = (x, truth, float((plain.double() - truth).abs().max()))
    backends: list[Backend] = ["native", "torch"] if _native.available() else ["torch"]
    for backend in backends:
        err64 = float(
            np.abs(RotaryEmbedding(64, angle_dtype=torch.float64, backend=backend)(x64)[0, 0].numpy() - ref).max()
        )
        ctx.claim(
            f"fast_path.{backend}_float64",
            f"{backend} path = exp(n B) x in float64 (257 positions, d = 64)",
            article_value="R_n x",
            measured=err64,
            tolerance=1e-11,
            passed=err64 <= 1e-11,
        )
        for dtype, (x, truth, base) in low.items():
            ours = float((apply_rotary(x, cos, sin, backend=backend).double() - truth).abs().max())
            name = str(dtype).removeprefix("torch.")
            ctx.claim(
                f"fast_path.{backend}_{name}",
                f"{backend} path in {name}: error ≤ 2 × the plain {name} formula's",
                article_value=None,
                measured={"kexue": ours, "plain": base},
                tolerance="≤ 2 × plain",
                passed=ours <= 2 * base,
            )
    ctx.claim(
        "fast_path.native_available",
        "the fused CPU kernel compiled and loaded on this machine",
        article_value=None,
        measured=_native.available(),
        documented=True,
    )


def _scores(
    h: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, heads: int, rotary_dim: int | None, layout: Layout
) -> torch.Tensor:
    """Attention scores ``(heads, T, T)`` of hidden states ``h`` ``(T, hidden)`` with RoPE in ``layout``."""
    t, head_dim = h.shape[0], wq.shape[0] // heads
    rope = RotaryEmbedding(head_dim, rotary_dim=rotary_dim, layout=layout, angle_dtype=torch.float64)
    q = (h @ wq.T).view(t, heads, head_dim).transpose(0, 1)
    k = (h @ wk.T).view(t, heads, head_dim).transpose(0, 1)
    return rope(q) @ rope(k).transpose(-1, -2)


@ROPE.check
def layout_conversion(ctx: ClaimContext) -> None:
    g = torch.Generator().manual_seed(ctx.seed)
    heads, head_dim, hidden, t = 4, 32, 64, 40
    h = torch.randn(t, hidden, dtype=torch.float64, generator=g)
    wq, wk = (torch.randn(heads * head_dim, hidden, dtype=torch.float64, generator=g) for _ in range(2))
    worst = 0.0
    directions: tuple[tuple[Layout, Layout], ...] = (("interleaved", "half"), ("half", "interleaved"))
    for rotary_dim in (None, 16):
        for source, target in directions:
            wq2, wk2 = (convert_layout(w, heads, source=source, target=target, rotary_dim=rotary_dim) for w in (wq, wk))
            converted = _scores(h, wq2, wk2, heads, rotary_dim, target)
            diff = (converted - _scores(h, wq, wk, heads, rotary_dim, source)).abs().max()
            worst = max(worst, float(diff))
    ctx.claim(
        "layout_conversion",
        "permuting W_q, W_k with convert_layout gives identical attention scores in the other layout "
        "(full and partial rotary, both directions)",
        article_value=None,
        measured=worst,
        tolerance=1e-10,
        passed=worst <= 1e-10,
    )


# Long-context settings of real models: (label, rope_type, head_dim, base, trained length L₀, fields)
_COMPARED: tuple[tuple[str, RopeType, int, float, int, dict[str, Any]], ...] = (
    ("linear x4 (position interpolation)", "linear", 128, 10000.0, 4096, {"factor": 4.0}),
    ("dynamic NTK x4, at 4 L0", "dynamic", 128, 10000.0, 4096, {"factor": 4.0}),
    ("YaRN x4 (Qwen2.5, L0 32k)", "yarn", 128, 1e6, 32768, {"factor": 4.0, "original_max_position_embeddings": 32768}),
    (
        "Llama 3.1 (x8, L0 8k)",
        "llama3",
        128,
        500000.0,
        8192,
        {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    ),
    (
        "LongRoPE (Phi-3 style)",
        "longrope",
        96,
        10000.0,
        4096,
        {
            "short_factor": [1.0 + 0.02 * i for i in range(48)],
            "long_factor": [1.0 + 0.5 * i for i in range(48)],
            "original_max_position_embeddings": 4096,
        },
    ),
    ("proportional, quarter rotated", "proportional", 128, 10000.0, 4096, {"partial_rotary_factor": 0.25}),
)


def _trained_for(rope_type: str, original: int) -> int:
    """The config's max_position_embeddings: the trained length for dynamic NTK (it scales past it),
    four times it for the others (whose original length is a field of their own)."""
    return original if rope_type == "dynamic" else 4 * original


def _scaling_gaps(transformers: ModuleType, init_functions: Mapping[str, Callable[..., Any]]) -> tuple[float, float]:
    """Max relative gap of the inverse frequencies and max gap of the attention factors, kexue vs transformers."""
    worst, factor_gap = 0.0, 0.0
    for _, rope_type, head_dim, base, original, fields in _COMPARED:
        config = transformers.LlamaConfig(
            hidden_size=4 * head_dim,
            num_attention_heads=4,
            head_dim=head_dim,
            max_position_embeddings=_trained_for(rope_type, original),
            rope_parameters={"rope_type": rope_type, "rope_theta": base, **fields},
        )
        for length in (original // 2, 4 * original):
            hf_inv, hf_factor = init_functions[rope_type](config, "cpu", seq_len=length)
            ours = rope_parameters_from_config(config, seq_len=length)
            gap = float(((ours.inv_freq - hf_inv.double()).abs() / hf_inv.double().abs().clamp_min(1e-300)).max())
            worst, factor_gap = max(worst, gap), max(factor_gap, abs(ours.attention_factor - hf_factor))
    return worst, factor_gap


@ROPE.check
def scaling_matches_transformers(ctx: ClaimContext) -> None:
    """Every rope_type of the installed transformers against kexue's float64 scalings."""
    require_extra("comparing RoPE scalings with transformers", "transformers")
    import transformers  # optional extra: nlp
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # optional extra: nlp

    # its advice about 'factor' vs 'original_max_position_embeddings', for the configs built here
    with quieter("transformers.modeling_rope_utils"):
        worst, factor_gap = _scaling_gaps(transformers, ROPE_INIT_FUNCTIONS)
    types = ", ".join(dict.fromkeys(c[1] for c in _COMPARED))
    ctx.claim(
        "scaling.matches_transformers",
        f"kexue's float64 scalings ({types}) against transformers "
        f"{transformers.__version__}'s ROPE_INIT_FUNCTIONS (float32), at half and at four times the trained length: "
        "max relative difference of the inverse frequencies, and of the attention factors",
        article_value="the same frequencies",
        measured={"inverse frequencies": worst, "attention factors": factor_gap},
        tolerance="2e-6 (float32 rounding), attention factors exactly",
        passed=worst <= 2e-6 and factor_gap == 0.0,
        details="the test suite runs 336 configurations x 6 lengths (tests/positional/test_scaling.py)",
    )


def _scaled(
    rope_type: RopeType, head_dim: int, base: float, original: int, fields: Mapping[str, Any]
) -> tuple[RopeParameters, RopeParameters]:
    """A setting's parameters at four times its trained length, and the unscaled full-head ladder."""
    p = rope_parameters(
        rope_type,
        head_dim=head_dim,
        base=base,
        max_position_embeddings=_trained_for(rope_type, original),
        seq_len=4 * original if rope_type in ("dynamic", "longrope") else None,
        **fields,
    )
    return p, rope_parameters(head_dim=head_dim, base=base)


def _largest_factor(fields: Mapping[str, Any]) -> float:
    return float(fields.get("factor", max(fields.get("long_factor", [1.0]))))


def _analysis_row(
    label: str, p: RopeParameters, plain: RopeParameters, original: int, fields: Mapping[str, Any]
) -> tuple[str | int | float, ...]:
    """One row of the scaling analysis table (see ``scaling_analysis``)."""
    a = pair_analysis(p, original)
    s = _largest_factor(fields)
    still = int((p.inv_freq == 0).sum())  # proportional rotary: pairs past the rotated share
    kept = int((a["ratio"] > 1 - 1e-9).sum())
    scaled = int(((a["ratio"] < 1 / s + 1e-9) & (p.inv_freq > 0)).sum()) if s > 1 else 0
    pairs = p.rotary_dim // 2
    return (
        label,
        pairs,
        kept,
        scaled,
        pairs - kept - scaled - still,
        still,
        int((pair_analysis(plain, original)["turns"] < 1).sum()),
        int(((pair_analysis(p, 4 * original)["turns"] < 1) & (p.inv_freq > 0)).sum()),
        round(p.attention_factor, 4),
    )


def _type_panels(
    axes: Any, label: str, rope_type: str, p: RopeParameters, plain: RopeParameters, original: int
) -> None:
    """One setting's row of three panels: wavelengths against L0 and 4 L0, the per-pair ratio, the decay bound."""
    wave, ratio, decay = axes
    scaled, unscaled = pair_analysis(p, original), pair_analysis(plain, original)
    rotating = (p.inv_freq > 0).numpy()  # proportional rotary leaves the pairs past its share still
    pairs = np.arange(p.rotary_dim // 2)
    wave.semilogy(np.arange(plain.rotary_dim // 2), unscaled["wavelength"].numpy(), label="unscaled", color="grey")
    wave.semilogy(
        pairs[rotating],
        scaled["wavelength"].numpy()[rotating],
        label="scaled",
        ls="--" if rope_type == "proportional" else "-",
    )
    for length, style in ((original, "--"), (4 * original, ":")):
        wave.axhline(length, color="black", ls=style, lw=0.8, label=f"L = {length:,}")
    wave.set(ylabel="wavelength 2π/θ_j")
    wave.set_title(label, fontsize=10)
    wave.legend(fontsize=6, loc="upper left")
    ratio.plot(pairs[rotating], scaled["ratio"].numpy()[rotating], marker=".", ms=3)
    ratio.set(ylabel="θ'_j / θ_j", yscale="log", xlim=(-1, len(pairs)))
    ratio.set_title(_RATIO_TITLES[rope_type], fontsize=9)
    distances = np.unique(np.geomspace(1, 4 * original, 200).astype(int))
    decay.semilogx(distances, attention_decay(plain.inv_freq, distances).numpy(), color="grey", label="unscaled")
    decay.semilogx(distances, attention_decay(p.inv_freq, distances).numpy(), label="scaled")
    decay.axvline(original, color="black", ls="--", lw=0.8)
    decay.set(ylabel="(2/R) Σ_j |S_j(Δ)|")
    decay.set_title("the article's long-range bound", fontsize=9)
    decay.legend(fontsize=6)


_RATIO_TITLES = {
    "linear": "Linear: every pair divided by s",
    "dynamic": "Dynamic NTK: a larger base (low pairs scaled most)",
    "yarn": "YaRN: high pairs kept, low ones / s, a ramp between",
    "llama3": "Llama 3: high band kept, low band / s, smooth between",
    "longrope": "LongRoPE: one searched factor per pair",
    "proportional": "Proportional: rotated pairs keep the full-head ladder",
}


@ROPE.check
def scaling_analysis(ctx: ClaimContext) -> None:
    """What each scaling does to each pair, and to the article's long-range decay: a row of panels per type."""
    import matplotlib.pyplot as plt  # optional extra: report

    rows = []
    fig, grid = plt.subplots(len(_COMPARED), 3, figsize=(15, 3.1 * len(_COMPARED)))
    for axes, (label, rope_type, head_dim, base, original, fields) in zip(grid, _COMPARED, strict=True):
        p, plain = _scaled(rope_type, head_dim, base, original, fields)
        rows.append(_analysis_row(label, p, plain, original, fields))
        _type_panels(axes, label, rope_type, p, plain, original)
    for axis, xlabel in zip(
        grid[-1], ("rotary pair j (high → low frequency)", "rotary pair j", "relative distance Δ"), strict=True
    ):
        axis.set_xlabel(xlabel)
    fig.subplots_adjust(hspace=0.45, wspace=0.25)
    ctx.figure(
        "scalings",
        fig,
        "One row per scaling type. Left: each rotary pair's wavelength against the trained length L0 "
        "(dashed) and 4 L0 (dotted); a pair above a line never completes a turn within it. Middle: the ratio of its "
        "scaled to its unscaled frequency (1: kept, 1/s: interpolated). Right: the RoPE article's long-range bound, "
        "scaled against unscaled (dashed: L0).",
    )
    table = Table(
        (
            "setting",
            "pairs",
            "kept",
            "divided by s or more",
            "in between",
            "not rotated",
            "pairs < 1 turn in L0 (unscaled)",
            "pairs < 1 turn in 4 L0 (scaled)",
            "attention factor",
        ),
        tuple(rows),
        caption="Per rotary pair: kept (ratio 1), interpolated (1/s, s the largest factor), blended, or not rotated "
        "(proportional rotary's pairs past its share); rotating pairs that never complete a turn within the "
        "trained length, before and, over four times that length, after scaling",
    )
    ctx.claim(
        "scaling.analysis",
        "what each long-context scaling does to each rotary pair, and the pairs that never "
        "complete a turn within the trained length: linear scales every pair, NTK mostly the low frequencies, YaRN and "
        "Llama 3 keep the high frequencies and interpolate the low ones with a blend in between, LongRoPE sets one "
        "factor per pair, proportional rotary keeps its pairs' frequencies",
        article_value=None,
        measured={r[0]: dict(zip(table.columns[1:], r[1:], strict=True)) for r in rows},
        documented=True,
        table=table,
    )


@ROPE.check
def mrope(ctx: ClaimContext) -> None:
    """M-RoPE (Qwen2-VL, Qwen3-VL) as the article's block solution; text reduces it to 1-D."""
    theta = rope_parameters(head_dim=128, base=1e6).inv_freq
    one_d = RotaryEmbedding(128, base=1e6, angle_dtype=torch.float64)
    q = torch.randn(1, 40, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(ctx.seed))
    measured = {}
    worst = 0.0
    for name, sections, interleaved in (
        ("Qwen2-VL, sections 16/24/24", (16, 24, 24), False),
        ("Qwen3-VL, sections 24/20/20, interleaved", (24, 20, 20), True),
    ):
        f = mrope_frequencies(theta, sections, interleaved=interleaved)
        rope = RotaryEmbedding(128, axes=3, split=[16, 24, 24], base=1e6, angle_dtype=torch.float64)
        rope.register_buffer("freqs", f, persistent=True)
        blocks = int(((f != 0).sum(0) == 1).sum())
        ladder_gap = float((f.sum(0) - theta).abs().max())
        text = torch.arange(40)[:, None].expand(-1, 3)
        text_gap = float((rope(q, text) - one_d(q, torch.arange(40))).abs().max())
        positions, _ = mrope_position_ids([4, (1, 8, 12), 6], spatial_merge_size=2)  # text, a 4 x 6 image, text
        m = rope.angles(positions)  # relativity: R_pᵀ R_q depends on q − p only
        shifted = rope.angles(positions + 17)
        relativity_gap = float(((shifted[:, None] - shifted[None]) - (m[:, None] - m[None])).abs().max())
        measured[name] = {
            "pairs on exactly one axis": f"{blocks} of {f.shape[1]}",
            "max |Σ_axis F − θ|": ladder_gap,
            "text tokens vs 1-D RoPE, max |Δ|": text_gap,
            "relativity over an image prompt, max |Δφ|": relativity_gap,
        }
        worst = max(worst, ladder_gap, text_gap, relativity_gap, float(blocks != f.shape[1]))
    ctx.claim(
        "mrope.block_solution",
        "M-RoPE is the article's N-D block solution with one split of the pairs (each pair turns with "
        "one of t, h, w at the 1-D ladder's frequency): relativity holds over a text + image prompt, and on text "
        "(t = h = w) it equals 1-D RoPE (head 128, float64)",
        article_value="the 2-D/N-D block solution; 1-D as its special case",
        measured=measured,
        tolerance=1e-12,
        passed=worst <= 1e-12,
    )


_SETTINGS = ("train_resolution", "extrapolate", "interpolate")  # the columns of vit.summarize's rows


@ROPE.check
def vit_experiment(ctx: ClaimContext) -> None:
    seeds = (0, 1, 2) if ctx.full else (0,)
    epochs = 40 if ctx.full else 12
    # quick: the digits' own 8×8 pixels, 4×4 → 6×6 tokens
    sizes = (vit.TRAIN_SIZE, vit.TEST_SIZE) if ctx.full else (8, 12)
    small, large = (f"{s // vit.PATCH}×{s // vit.PATCH}" for s in sizes)
    with ctx.steps("training ViTs", len(seeds) * len(vit.VARIANTS) * epochs) as advance:
        results = vit.run_experiment(seeds=seeds, epochs=epochs, sizes=sizes, on_epoch=advance)
    table = vit.summarize(results)
    for variant, row in table.items():
        ctx.claim(
            f"vit.{variant}",
            f"digits ViT accuracy, {variant}: {small} grid (trained), {large} grid extrapolated / interpolated "
            f"({len(seeds)} seed(s), {epochs} epochs)",
            article_value="no experiments in the article",
            measured={k: _rounded(v) for k, v in row.items()},
            documented=True,
        )
    worst = min(row["train_resolution"] or 0.0 for row in table.values())  # never None: every variant has it
    ctx.claim(
        "vit.all_variants_learn",
        "every variant learns the task at the training resolution (accuracy ≥ 0.8)",
        article_value=None,
        measured=worst,
        tolerance=0.8,
        passed=worst >= 0.8,
        table=_accuracy_table(table, small, large, f"{len(seeds)} seed(s), {epochs} epochs"),
    )
    _accuracy_figure(ctx, table, small, large, f"{len(seeds)} seed(s), {epochs} epochs")


def _rounded(accuracy: float | None) -> float | None:
    """An accuracy to 4 places (None stays None: the learned table's extrapolation)."""
    return None if accuracy is None else round(accuracy, 4)


def _accuracy_table(table: dict[str, dict[str, float | None]], small: str, large: str, runs: str) -> Table:
    """The ViT accuracies per variant and setting, as the report's table."""
    return Table(
        ("variant", f"{small} grid (trained)", f"{large}, integer positions", f"{large}, scaled positions"),
        tuple((name, *(_rounded(row[k]) for k in _SETTINGS)) for name, row in table.items()),
        caption=f"held-out digits accuracy, {runs}; '—': a learned table has no integer "
        "positions beyond its grid (it is resized)",
    )


def _accuracy_figure(
    ctx: ClaimContext, table: dict[str, dict[str, float | None]], small: str, large: str, runs: str
) -> None:
    """Bars of the ViT accuracies per variant: the trained grid, the larger one extrapolated and interpolated."""
    import matplotlib.pyplot as plt  # optional extra: report

    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = list(table)
    width = 0.26
    labels = (f"{small} grid (train)", f"{large}, integer positions", f"{large}, scaled positions")
    for i, (key, label) in enumerate(zip(_SETTINGS, labels, strict=True)):
        accuracies = [table[n][key] for n in names]
        values = [0.0 if a is None else a for a in accuracies]
        bars = ax.bar(np.arange(len(names)) + (i - 1) * width, values, width, label=label)
        ax.bar_label(bars, labels=["n/a" if a is None else f"{a:.2f}" for a in accuracies], fontsize=7)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set(
        ylabel="test accuracy",
        ylim=(0, 1.25),
        title="Tiny ViT on digits: position encodings at train and larger resolution",
    )
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    ctx.figure(
        "vit_accuracy",
        fig,
        f"Held-out accuracy of a 2-block ViT on scikit-learn digits ({runs}). "
        f"The learned table is bicubically resized for {large}; RoPE variants use integer (extrapolate) or "
        "rescaled (interpolate) coordinates.",
    )
