"""``kexue bench rope``: the fused rotary kernel against HF transformers, rotary-embedding-torch and the floors.

Cases (float32; full size, ``--quick`` divides the batch by 4):

* A: ``x`` of shape (8, 16, 2048, 64) (batch, heads, tokens, head dim), cos/sin precomputed,
  half layout. kexue allocating, with ``out=``, in place, its plain-torch path eager and under
  ``torch.compile`` (inductor), q and k in one call (``apply_rotary_qk``); HF's
  ``apply_rotary_pos_emb`` (it rotates q and k in one call, so both sides rotate q and k);
  rotary-embedding-torch's ``apply_rotary_emb`` (interleaved layout, so kexue runs
  interleaved against it); the floors ``x.clone()`` and ``buf.copy_(x)``.
* B: 2-D axial RoPE on a 64×64 grid, (8, 16, 4096, 64), against rotary-embedding-torch's
  ``get_axial_freqs`` + ``apply_rotary_emb`` (both interleaved, frequencies precomputed).
* C: forward + backward of case A (q and k, gradient of a fixed upstream tensor).
* D: a random-initialised LLaMA (4 layers, hidden 512, 8 heads of 64; 4 x 1024 tokens, quick
  2 x 256) with transformers' ``apply_rotary_pos_emb`` and with kexue's (:mod:`kexue.positional.hf`):
  the share of the forward spent in RoPE (timed at each call; the patch's default in-place rotation and
  ``in_place=False``), prefill time, and greedy decoding of 32 tokens with the KV cache.
* E: every scaling type built by ``RotaryEmbedding.from_config``: its cos/sin tables for 2048
  (float, so uncached) positions and the rotation of case A's ``x`` into a preallocated
  ``out=``, against the default.
* The one-off compile time of the C kernel.

At full size every case is the median of at least 15 calls (``MIN_REPEATS``), after one warm-up call.
* On CUDA (``--device cuda``): case A in bfloat16 against the copy floor, and flash-attn's /
  Liger's rotary kernels when importable.

Ratios: ``rope.fwd_vs_hf``, ``rope.fwd_vs_lucidrains``, ``rope.axial_vs_lucidrains``,
``rope.fwd_bwd_vs_hf`` (peer time / kexue time, targets 3, 2, 2, 1.5), ``rope.fwd_vs_clone``
(kexue allocating / clone, target ≤ 1.5) and ``rope.out_vs_copy`` (kexue ``out=`` / copy_,
target ≤ 2), ``rope.qk_vs_copy`` (``apply_rotary_qk(q, k, out=)`` / a copy_ of q and of k,
target ≤ 1.1), ``rope.compiled_vs_kernel`` (no target), ``rope.hf_patch_rope_share`` (RoPE's share of the
LLaMA forward, transformers / kexue, target ≥ 3), and, reported without targets,
``rope.hf_patch_rope_share_out_of_place``, ``rope.hf_patch_prefill`` and ``rope.hf_patch_decode`` (transformers
time / kexue time); ``rope.scaled_tables_vs_1d`` and ``rope.scaled_apply_vs_1d`` (slowest scaling type / the
1-D case, target ≤ 1.15).
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kexue.positional import _native
from kexue.positional.hf import hf_apply_rotary_pos_emb, hf_apply_rotary_pos_emb_, patch_hf_rope
from kexue.positional.rope import RotaryEmbedding, apply_rotary, apply_rotary_qk, grid_positions
from kexue.report.bench import Bench, BenchSuite, interleaved_times

if TYPE_CHECKING:  # the bench peer's type only (transformers is the nlp extra)
    from transformers import LlamaForCausalLM

BENCH = BenchSuite("rope")
# Allocating cases are at the mercy of page faults on this class of VM (a fresh 64 MB output
# took 12 ms in one call and 30-190 ms in another), so at full size every case takes at least 15 repeats.
MIN_REPEATS = 15


def _shape(bench: Bench, tokens: int) -> tuple[int, int, int, int]:
    return (2 if bench.quick else 8, 16, tokens, 64)


def _hf_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's (1, T, D) duplicated tables from kexue's (T, D/2)."""
    return torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]


@dataclass(frozen=True)
class _CaseA:
    """Case A's inputs and how it records: ``q``/``k`` ``(B, H, T, 64)``, their ``(T, 32)`` tables, an output buffer."""

    case: str
    params: dict[str, Any]
    reps: int
    q: torch.Tensor
    k: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    buf: torch.Tensor


@BENCH.case
def forward(bench: Bench) -> None:
    """A: kexue's rotation against the memory floors, HF, its own compiled torch path and rotary-embedding-torch."""
    shape = _shape(bench, 2048)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(shape, generator=g).to(bench.device)
    k = torch.randn(shape, generator=g).to(bench.device)
    rope = RotaryEmbedding(64).to(bench.device)
    cos, sin = rope.cos_sin(torch.arange(shape[2], device=bench.device))  # (T, 32)
    a = _CaseA(
        case="A: rope (8,16,2048,64) float32" if not bench.quick else f"A: rope {shape} float32",
        params={"shape": list(shape), "dtype": "float32", "layout": "half", "threads": torch.get_num_threads()},
        reps=bench.repeats if bench.quick else max(bench.repeats, MIN_REPEATS),
        q=q,
        k=k,
        cos=cos,
        sin=sin,
        buf=torch.empty_like(q).fill_(0.0),
    )
    ours_s, both_s = _against_floors(bench, a)
    _against_hf(bench, a, both_s)
    _fused_qk(bench, a)
    _compiled(bench, a, ours_s)
    _against_lucidrains(bench, a, rope)


def _against_floors(bench: Bench, a: _CaseA) -> tuple[float, float]:
    """kexue's calls (allocating, ``out=``, in place, the torch path, q and k) and the copy floors; returns the
    median seconds of the allocating call and of q and k."""
    q, k, cos, sin, buf, case, params, reps = a.q, a.k, a.cos, a.sin, a.buf, a.case, a.params, a.reps
    ours = bench.time(case, "kexue apply_rotary", lambda: apply_rotary(q, cos, sin), params=params, repeats=reps)
    ours_out = bench.time(
        case, "kexue apply_rotary out=", lambda: apply_rotary(q, cos, sin, out=buf), params=params, repeats=reps
    )
    bench.time(
        case, "kexue apply_rotary in place", lambda: apply_rotary(buf, cos, sin, out=buf), params=params, repeats=reps
    )
    bench.time(
        case, "kexue plain-torch path", lambda: apply_rotary(q, cos, sin, backend="torch"), params=params, repeats=reps
    )
    both = bench.time(
        case,
        "kexue q and k",
        lambda: (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)),
        params=params,
        repeats=reps,
    )
    clone = bench.time(case, "floor: x.clone()", lambda: q.clone(), params=params, repeats=reps)
    copy = bench.time(case, "floor: buf.copy_(x)", lambda: buf.copy_(q), params=params, repeats=reps)

    bench.ratio(
        "rope.fwd_vs_clone",
        ours.median_s / clone.median_s,
        target=1.5,
        higher_is_better=False,
        description="kexue apply_rotary (allocating) time / x.clone() time",
    )
    bench.ratio(
        "rope.out_vs_copy",
        ours_out.median_s / copy.median_s,
        target=2.0,
        higher_is_better=False,
        description="kexue apply_rotary out= time / buf.copy_(x) time",
    )
    return ours.median_s, both.median_s


def _against_hf(bench: Bench, a: _CaseA, both_s: float) -> None:
    """HF's ``apply_rotary_pos_emb`` on q and k (its duplicated tables) against kexue on q and k."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # optional extra: nlp (bench peer)

    q, k = a.q, a.k
    hf_cos, hf_sin = _hf_tables(a.cos, a.sin)
    hf = bench.time(
        a.case,
        "HF apply_rotary_pos_emb (q and k)",
        lambda: apply_rotary_pos_emb(q, k, hf_cos, hf_sin),
        params=a.params,
        repeats=a.reps,
    )
    bench.ratio(
        "rope.fwd_vs_hf",
        hf.median_s / both_s,
        target=3.0,
        description="HF apply_rotary_pos_emb(q, k) time / kexue apply_rotary on q and k",
    )


def _against_lucidrains(bench: Bench, a: _CaseA, rope: RotaryEmbedding) -> None:
    """rotary-embedding-torch's ``apply_rotary_emb`` against kexue, both interleaved."""
    from rotary_embedding_torch import apply_rotary_emb  # optional extra: bench

    q, cos, sin = a.q, a.cos, a.sin
    freqs = torch.repeat_interleave(rope.angles(torch.arange(q.shape[2], device=q.device)), 2, dim=-1)  # (T, 64)
    peer = bench.time(
        a.case,
        "rotary-embedding-torch apply_rotary_emb (interleaved)",
        lambda: apply_rotary_emb(freqs, q),
        params=a.params,
        repeats=a.reps,
    )
    inter = bench.time(
        a.case,
        "kexue apply_rotary (interleaved)",
        lambda: apply_rotary(q, cos, sin, layout="interleaved"),
        params=a.params,
        repeats=a.reps,
    )
    bench.ratio(
        "rope.fwd_vs_lucidrains",
        peer.median_s / inter.median_s,
        target=2.0,
        description="rotary-embedding-torch apply_rotary_emb time / kexue apply_rotary (both interleaved)",
    )


def _fused_qk(bench: Bench, a: _CaseA) -> None:
    """q and k in one kernel call (out=) against one copy_ of each, in interleaved rounds."""
    q, k, cos, sin, buf = a.q, a.k, a.cos, a.sin, a.buf
    kbuf = torch.empty_like(k).fill_(0.0)
    times = interleaved_times(
        {"qk": lambda: apply_rotary_qk(q, k, cos, sin, out=(buf, kbuf)), "copy": lambda: (buf.copy_(q), kbuf.copy_(k))},
        max(a.reps, 2 * MIN_REPEATS),
    )
    fused = bench.record(a.case, "kexue apply_rotary_qk out= (one call)", times["qk"], params=a.params)
    floor = bench.record(a.case, "floor: copy_ of q and of k", times["copy"], params=a.params)
    bench.ratio(
        "rope.qk_vs_copy",
        fused.median_s / floor.median_s,
        target=1.1,
        higher_is_better=False,
        description="kexue apply_rotary_qk(q, k, out=) time / copy_ of q and k (interleaved rounds)",
    )


def _compiled(bench: Bench, a: _CaseA, kernel_s: float) -> None:
    """The plain-torch path under torch.compile (inductor; the warm-up call compiles) beside the kernel."""
    if bench.device != "cpu":
        return
    compiled = torch.compile(lambda x, c, s: apply_rotary(x, c, s, backend="torch"), fullgraph=True, backend="inductor")
    q, cos, sin = a.q, a.cos, a.sin
    try:
        traced = bench.time(
            a.case,
            "kexue plain-torch path, torch.compile (inductor)",
            lambda: compiled(q, cos, sin),
            params=a.params,
            repeats=a.reps,
        )
    finally:
        torch._dynamo.reset()
    bench.ratio(
        "rope.compiled_vs_kernel",
        traced.median_s / kernel_s,
        description="torch.compile'd plain-torch path time / the C kernel (allocating; no target)",
    )


@BENCH.case
def axial(bench: Bench) -> None:
    shape = _shape(bench, 4096)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(bench.device)
    rope = RotaryEmbedding(64, axes=2, layout="interleaved").to(bench.device)
    cos, sin = rope.cos_sin(grid_positions(64, 64, device=bench.device))  # (4096, 32)
    case = f"B: 2-D axial rope, 64x64 grid, {tuple(shape)} float32"
    params = {"shape": list(shape), "grid": [64, 64], "layout": "interleaved"}
    reps = bench.repeats if bench.quick else max(bench.repeats, MIN_REPEATS)
    ours = bench.time(
        case,
        "kexue apply_rotary (axial)",
        lambda: apply_rotary(x, cos, sin, layout="interleaved"),
        params=params,
        repeats=reps,
    )

    # optional extra: bench (the peer)
    from rotary_embedding_torch import RotaryEmbedding as PeerRotary
    from rotary_embedding_torch import apply_rotary_emb  # optional extra: bench

    peer_rope = PeerRotary(dim=32, freqs_for="pixel", max_freq=256).to(bench.device)
    freqs = peer_rope.get_axial_freqs(64, 64).reshape(4096, 64)  # (T, 64): 32 for rows, 32 for columns
    peer = bench.time(
        case,
        "rotary-embedding-torch axial apply_rotary_emb",
        lambda: apply_rotary_emb(freqs, x),
        params=params,
        repeats=reps,
    )
    bench.ratio(
        "rope.axial_vs_lucidrains",
        peer.median_s / ours.median_s,
        target=2.0,
        description="rotary-embedding-torch axial time / kexue axial time (64x64 grid)",
    )


@BENCH.case
def forward_backward(bench: Bench) -> None:
    shape = _shape(bench, 2048)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(shape, generator=g).to(bench.device).requires_grad_()
    k = torch.randn(shape, generator=g).to(bench.device).requires_grad_()
    upstream = torch.randn(shape, generator=g).to(bench.device)
    cos, sin = RotaryEmbedding(64).to(bench.device).cos_sin(torch.arange(shape[2], device=bench.device))
    case = f"C: rope forward + backward, q and k {tuple(shape)} float32"
    params = {"shape": list(shape)}
    reps = bench.repeats if bench.quick else max(bench.repeats, MIN_REPEATS)

    def ours() -> None:
        q.grad = k.grad = None
        torch.autograd.backward([apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)], [upstream, upstream])

    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # optional extra: nlp (bench peer)

    hf_cos, hf_sin = _hf_tables(cos, sin)

    def hf() -> None:
        q.grad = k.grad = None
        torch.autograd.backward(list(apply_rotary_pos_emb(q, k, hf_cos, hf_sin)), [upstream, upstream])

    mine = bench.time(case, "kexue apply_rotary fwd+bwd", ours, params=params, repeats=reps)
    peer = bench.time(case, "HF apply_rotary_pos_emb fwd+bwd", hf, params=params, repeats=reps)
    bench.ratio(
        "rope.fwd_bwd_vs_hf",
        peer.median_s / mine.median_s,
        target=1.5,
        description="HF fwd+bwd time / kexue fwd+bwd time (q and k)",
    )


def _timed(fn: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    """``fn`` that adds its own wall time to ``total[0]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    return wrapper


_FUNCTION = "apply_rotary_pos_emb"  # the modeling module's function that is timed


def _rope_share(
    model: nn.Module, ids: torch.Tensor, module: ModuleType, function: Callable[..., Any], repeats: int
) -> tuple[list[float], float]:
    """Forward times of ``model(ids)`` with ``module.apply_rotary_pos_emb = function``, and the
    median share of them spent inside that function (wall time, timed at each call)."""
    saved = getattr(module, _FUNCTION)
    total = [0.0]
    setattr(module, _FUNCTION, _timed(function, total))
    times: list[float] = []
    shares: list[float] = []
    try:
        with torch.no_grad():
            model(ids)  # warm-up
            for _ in range(repeats):
                total[0] = 0.0
                start = time.perf_counter()
                model(ids)
                times.append(time.perf_counter() - start)
                shares.append(total[0] / times[-1])
    finally:
        setattr(module, _FUNCTION, saved)
    return times, statistics.median(shares)


@dataclass(frozen=True)
class _CaseD:
    """Case D's model, its input ids and how it records."""

    case: str
    params: dict[str, Any]
    reps: int
    model: LlamaForCausalLM
    ids: torch.Tensor


@BENCH.case
def hf_model(bench: Bench) -> None:
    """D: a random-initialised LLaMA (4 layers, hidden 512, 8 heads of 64) with transformers' RoPE and with kexue's."""
    if bench.device != "cpu":
        return
    import transformers  # optional extra: nlp (bench peer)

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    batch, tokens = (2, 256) if bench.quick else (4, 1024)
    ids = torch.randint(0, 1024, (batch, tokens), generator=torch.Generator().manual_seed(1))
    d = _CaseD(
        case=f"D: LLaMA forward (4 x 512, {batch} x {tokens} tokens)",
        params={"batch": batch, "tokens": tokens, "layers": 4, "hidden": 512, "threads": torch.get_num_threads()},
        reps=max(3, bench.repeats if bench.quick else 7),
        model=model,
        ids=ids,
    )
    _prefill_shares(bench, d)
    _decode(bench, d, new=16 if bench.quick else 32)


def _prefill_shares(bench: Bench, d: _CaseD) -> None:
    """Prefill times and RoPE's share of them: transformers' function, the patch's in place and out of place."""
    from transformers.models.llama import modeling_llama  # optional extra: nlp (bench peer)

    case, params, reps, model, ids = d.case, d.params, d.reps, d.model, d.ids
    original = modeling_llama.apply_rotary_pos_emb
    plain_times, plain_share = _rope_share(model, ids, modeling_llama, original, reps)
    fused_times, fused_share = _rope_share(model, ids, modeling_llama, hf_apply_rotary_pos_emb_, reps)
    copy_times, copy_share = _rope_share(model, ids, modeling_llama, hf_apply_rotary_pos_emb, reps)
    plain_s = bench.record(
        case, "transformers RoPE: prefill", plain_times, params={**params, "rope_share": round(plain_share, 4)}
    ).median_s
    fused_s = bench.record(
        case, "kexue RoPE (patch_hf_rope): prefill", fused_times, params={**params, "rope_share": round(fused_share, 4)}
    ).median_s
    bench.record(
        case,
        "kexue RoPE (patch_hf_rope, in_place=False): prefill",
        copy_times,
        params={**params, "rope_share": round(copy_share, 4)},
    )
    bench.ratio(
        "rope.hf_patch_rope_share",
        plain_share / max(fused_share, 1e-9),
        target=3.0,
        description=f"RoPE's share of the forward, transformers / kexue ({plain_share:.1%} / {fused_share:.1%})",
    )
    bench.ratio(
        "rope.hf_patch_rope_share_out_of_place",
        plain_share / max(copy_share, 1e-9),
        description=f"the same with in_place=False ({plain_share:.1%} / {copy_share:.1%}; no target)",
    )
    bench.ratio(
        "rope.hf_patch_prefill",
        plain_s / fused_s,
        description="prefill time, transformers RoPE / kexue RoPE (no target)",
    )


def _decode(bench: Bench, d: _CaseD, new: int) -> None:
    """Greedy decoding of ``new`` tokens with the KV cache, transformers' RoPE against the patch."""
    model = d.model
    prompt = d.ids[:, : d.ids.shape[1] // 4]

    def decode() -> None:
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    decode_params = {**d.params, "prompt": prompt.shape[1], "new_tokens": new}
    case = d.case.replace("forward", "greedy decode")
    plain_decode = bench.time(case, "transformers RoPE", decode, params=decode_params, repeats=3)
    with patch_hf_rope(model):
        fused_decode = bench.time(case, "kexue RoPE (patch_hf_rope)", decode, params=decode_params, repeats=3)
    bench.ratio(
        "rope.hf_patch_decode",
        plain_decode.median_s / fused_decode.median_s,
        description="greedy decode time with the KV cache, transformers RoPE / kexue RoPE (no target)",
    )


def _tables_call(rope: RotaryEmbedding, positions: torch.Tensor) -> Callable[[], Any]:
    """``rope.cos_sin(positions)``, to be timed."""
    return lambda: rope.cos_sin(positions)


def _rotate_call(
    rope: RotaryEmbedding, x: torch.Tensor, positions: torch.Tensor, out: torch.Tensor
) -> Callable[[], Any]:
    """``rope(x, positions, out=out)``, to be timed."""
    return lambda: rope(x, positions, out=out)


_SCALED: dict[str, dict[str, Any]] = {  # rope_type -> its fields, for a head of 64 trained at 4,096 tokens
    "default": {},
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 4.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 4096},
    "llama3": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4096,
    },
    "longrope": {"short_factor": [1.0] * 32, "long_factor": [4.0] * 32, "original_max_position_embeddings": 4096},
}


@BENCH.case
def scaled(bench: Bench) -> None:
    """E: every scaling type from a transformers config: cos/sin tables and the rotation, against the plain 1-D case."""
    import transformers  # optional extra: nlp (bench peer)

    shape = _shape(bench, 2048)
    q = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(bench.device)
    positions = torch.arange(shape[2], device=bench.device)
    buf = torch.empty_like(q).fill_(0.0)  # out=: the rotations compare without the page faults of a fresh 64 MB output
    rounds = bench.repeats if bench.quick else max(bench.repeats, 3 * MIN_REPEATS)
    ropes: dict[str, RotaryEmbedding] = {}
    for rope_type, fields in _SCALED.items():
        config = transformers.LlamaConfig(
            hidden_size=1024,
            num_attention_heads=16,
            head_dim=64,
            max_position_embeddings=16384,
            rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, **fields},
        )
        ropes[rope_type] = RotaryEmbedding.from_config(config, seq_len=8192).to(bench.device)
    tables = interleaved_times({t: _tables_call(r, positions.double()) for t, r in ropes.items()}, rounds)
    applies = interleaved_times({t: _rotate_call(r, q, positions, buf) for t, r in ropes.items()}, rounds)
    for rope_type, rope in ropes.items():
        params = {
            "shape": list(shape),
            "rope_type": rope_type,
            "attention_factor": round(rope.attention_factor, 4),
            "interleaved_rounds": rounds,
        }
        bench.record("E: tables for 2048 positions", rope_type, tables[rope_type], params=params)
        bench.record(f"E: rotate {tuple(shape)} out=", rope_type, applies[rope_type], params=params)

    def worst(times: dict[str, list[float]]) -> float:
        base = statistics.median(times["default"])
        return max(statistics.median(v) / base for k, v in times.items() if k != "default")

    bench.ratio(
        "rope.scaled_tables_vs_1d",
        worst(tables),
        target=1.15,
        higher_is_better=False,
        description="slowest scaling type's cos/sin table time / the plain 1-D table time (interleaved rounds)",
    )
    bench.ratio(
        "rope.scaled_apply_vs_1d",
        worst(applies),
        target=1.15,
        higher_is_better=False,
        description="slowest scaling type's rotation time / the plain 1-D rotation (out=, interleaved rounds)",
    )


@BENCH.case
def compile_time(bench: Bench) -> None:
    if bench.device != "cpu" or not _native.available():
        return
    bench.time(
        "one-off: compile the fused CPU kernel",
        "cc -O3 -march=native -fopenmp",
        _native.fresh_compile_seconds,
        repeats=1,
    )


@BENCH.case
def gpu_bf16(bench: Bench) -> None:
    if not bench.device.startswith("cuda"):
        return
    shape = (8, 16, 2048, 64)
    x = torch.randn(shape, device=bench.device, dtype=torch.bfloat16)
    cos, sin = RotaryEmbedding(64).to(bench.device).cos_sin(torch.arange(2048, device=bench.device))
    buf = torch.empty_like(x)
    case = "A on GPU: rope (8,16,2048,64) bfloat16"
    ours = bench.time(
        case,
        "kexue apply_rotary out= (torch path)",
        lambda: apply_rotary(x, cos, sin, out=buf),
        params={"dtype": "bfloat16"},
    )
    copy = bench.time(case, "floor: buf.copy_(x)", lambda: buf.copy_(x))
    bench.ratio(
        "rope.gpu_bf16_copy_fraction",
        copy.median_s / ours.median_s,
        target=0.8,
        description="copy_ time / kexue out= time on GPU in bfloat16 (fraction of copy bandwidth)",
    )
    try:  # an optional peer outside kexue's extras
        flash_rotary = importlib.import_module("flash_attn.layers.rotary").apply_rotary_emb
    except ImportError:
        flash_rotary = None
    if flash_rotary is not None:
        peer = bench.time(
            case,
            "flash-attn apply_rotary_emb",
            lambda: flash_rotary(x.transpose(1, 2), cos.to(x.dtype), sin.to(x.dtype)),
        )
        bench.ratio(
            "rope.gpu_vs_flash_attn", peer.median_s / ours.median_s, description="flash-attn time / kexue time (bf16)"
        )
