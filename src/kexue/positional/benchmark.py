"""``kexue bench rope``: the fused rotary kernel against HF transformers, rotary-embedding-torch and the memory floors.

Cases (float32; full size, ``--quick`` divides the batch by 4):

* A: ``x`` of shape (8, 16, 2048, 64) (batch, heads, tokens, head dim), cos/sin precomputed,
  half layout. kexue allocating, with ``out=``, in place, and its plain-torch path; HF's
  ``apply_rotary_pos_emb`` (it rotates q and k in one call, so both sides rotate q and k);
  rotary-embedding-torch's ``apply_rotary_emb`` (interleaved layout, so kexue runs
  interleaved against it); the floors ``x.clone()`` and ``buf.copy_(x)``.
* B: 2-D axial RoPE on a 64×64 grid, (8, 16, 4096, 64), against rotary-embedding-torch's
  ``get_axial_freqs`` + ``apply_rotary_emb`` (both interleaved, frequencies precomputed).
* C: forward + backward of case A (q and k, gradient of a fixed upstream tensor).
* The one-off compile time of the C kernel.

At full size every case is the median of at least 15 calls (``MIN_REPEATS``), after one warm-up call.
* On CUDA (``--device cuda``): case A in bfloat16 against the copy floor, and flash-attn's /
  Liger's rotary kernels when importable.

Ratios: ``rope.fwd_vs_hf``, ``rope.fwd_vs_lucidrains``, ``rope.axial_vs_lucidrains``,
``rope.fwd_bwd_vs_hf`` (peer time / kexue time, targets 3, 2, 2, 1.5), ``rope.fwd_vs_clone``
(kexue allocating / clone, target ≤ 1.5) and ``rope.out_vs_copy`` (kexue ``out=`` / copy_,
target ≤ 2).
"""

from __future__ import annotations

import torch

from kexue.positional import _native
from kexue.positional.rope import RotaryEmbedding, apply_rotary, grid_positions
from kexue.report.bench import Bench, BenchSuite

BENCH = BenchSuite("rope")
# Allocating cases are at the mercy of page faults on this class of VM (a fresh 64 MB output
# took 12 ms in one call and 30-190 ms in another), so at full size every case takes at least 15 repeats.
MIN_REPEATS = 15


def _shape(bench: Bench, tokens: int) -> tuple[int, int, int, int]:
    return (2 if bench.quick else 8, 16, tokens, 64)


def _hf_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's (1, T, D) duplicated tables from kexue's (T, D/2)."""
    return torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]


@BENCH.case
def forward(bench: Bench) -> None:
    shape = _shape(bench, 2048)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(shape, generator=g).to(bench.device)
    k = torch.randn(shape, generator=g).to(bench.device)
    rope = RotaryEmbedding(64).to(bench.device)
    cos, sin = rope.cos_sin(torch.arange(shape[2], device=bench.device))  # (T, 32)
    buf = torch.empty_like(q).fill_(0.0)
    case = "A: rope (8,16,2048,64) float32" if not bench.quick else f"A: rope {shape} float32"
    params = {"shape": list(shape), "dtype": "float32", "layout": "half", "threads": torch.get_num_threads()}
    reps = bench.repeats if bench.quick else max(bench.repeats, MIN_REPEATS)

    ours = bench.time(case, "kexue apply_rotary", lambda: apply_rotary(q, cos, sin), params=params, repeats=reps)
    ours_out = bench.time(case, "kexue apply_rotary out=", lambda: apply_rotary(q, cos, sin, out=buf), params=params, repeats=reps)
    bench.time(case, "kexue apply_rotary in place", lambda: apply_rotary(buf, cos, sin, out=buf), params=params, repeats=reps)
    bench.time(case, "kexue plain-torch path", lambda: apply_rotary(q, cos, sin, backend="torch"), params=params, repeats=reps)
    both = bench.time(case, "kexue q and k", lambda: (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)), params=params, repeats=reps)
    clone = bench.time(case, "floor: x.clone()", lambda: q.clone(), params=params, repeats=reps)
    copy = bench.time(case, "floor: buf.copy_(x)", lambda: buf.copy_(q), params=params, repeats=reps)

    bench.ratio("rope.fwd_vs_clone", ours.median_s / clone.median_s, target=1.5, higher_is_better=False,
                description="kexue apply_rotary (allocating) time / x.clone() time")
    bench.ratio("rope.out_vs_copy", ours_out.median_s / copy.median_s, target=2.0, higher_is_better=False,
                description="kexue apply_rotary out= time / buf.copy_(x) time")

    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf_cos, hf_sin = _hf_tables(cos, sin)
    hf = bench.time(case, "HF apply_rotary_pos_emb (q and k)", lambda: apply_rotary_pos_emb(q, k, hf_cos, hf_sin), params=params, repeats=reps)
    bench.ratio("rope.fwd_vs_hf", hf.median_s / both.median_s, target=3.0,
                description="HF apply_rotary_pos_emb(q, k) time / kexue apply_rotary on q and k")

    from rotary_embedding_torch import apply_rotary_emb

    freqs = torch.repeat_interleave(rope.angles(torch.arange(shape[2], device=bench.device)), 2, dim=-1)  # (T, 64) interleaved
    peer = bench.time(case, "rotary-embedding-torch apply_rotary_emb (interleaved)", lambda: apply_rotary_emb(freqs, q), params=params, repeats=reps)
    inter = bench.time(case, "kexue apply_rotary (interleaved)", lambda: apply_rotary(q, cos, sin, layout="interleaved"), params=params, repeats=reps)
    bench.ratio("rope.fwd_vs_lucidrains", peer.median_s / inter.median_s, target=2.0,
                description="rotary-embedding-torch apply_rotary_emb time / kexue apply_rotary (both interleaved)")


@BENCH.case
def axial(bench: Bench) -> None:
    shape = _shape(bench, 4096)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(bench.device)
    rope = RotaryEmbedding(64, axes=2, layout="interleaved").to(bench.device)
    cos, sin = rope.cos_sin(grid_positions(64, 64, device=bench.device))  # (4096, 32)
    case = f"B: 2-D axial rope, 64x64 grid, {tuple(shape)} float32"
    params = {"shape": list(shape), "grid": [64, 64], "layout": "interleaved"}
    reps = bench.repeats if bench.quick else max(bench.repeats, MIN_REPEATS)
    ours = bench.time(case, "kexue apply_rotary (axial)", lambda: apply_rotary(x, cos, sin, layout="interleaved"), params=params, repeats=reps)

    from rotary_embedding_torch import RotaryEmbedding as PeerRotary
    from rotary_embedding_torch import apply_rotary_emb

    peer_rope = PeerRotary(dim=32, freqs_for="pixel", max_freq=256).to(bench.device)
    freqs = peer_rope.get_axial_freqs(64, 64).reshape(4096, 64)  # (T, 64): 32 for rows, 32 for columns
    peer = bench.time(case, "rotary-embedding-torch axial apply_rotary_emb", lambda: apply_rotary_emb(freqs, x), params=params, repeats=reps)
    bench.ratio("rope.axial_vs_lucidrains", peer.median_s / ours.median_s, target=2.0,
                description="rotary-embedding-torch axial time / kexue axial time (64x64 grid)")


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

    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf_cos, hf_sin = _hf_tables(cos, sin)

    def hf() -> None:
        q.grad = k.grad = None
        torch.autograd.backward(list(apply_rotary_pos_emb(q, k, hf_cos, hf_sin)), [upstream, upstream])

    mine = bench.time(case, "kexue apply_rotary fwd+bwd", ours, params=params, repeats=reps)
    peer = bench.time(case, "HF apply_rotary_pos_emb fwd+bwd", hf, params=params, repeats=reps)
    bench.ratio("rope.fwd_bwd_vs_hf", peer.median_s / mine.median_s, target=1.5,
                description="HF fwd+bwd time / kexue fwd+bwd time (q and k)")


@BENCH.case
def compile_time(bench: Bench) -> None:
    if bench.device != "cpu" or not _native.available():
        return
    bench.time("one-off: compile the fused CPU kernel", "cc -O3 -march=native -fopenmp", _native.fresh_compile_seconds, repeats=1)


@BENCH.case
def gpu_bf16(bench: Bench) -> None:
    if not bench.device.startswith("cuda"):
        return
    shape = (8, 16, 2048, 64)
    x = torch.randn(shape, device=bench.device, dtype=torch.bfloat16)
    cos, sin = RotaryEmbedding(64).to(bench.device).cos_sin(torch.arange(2048, device=bench.device))
    buf = torch.empty_like(x)
    case = "A on GPU: rope (8,16,2048,64) bfloat16"
    ours = bench.time(case, "kexue apply_rotary out= (torch path)", lambda: apply_rotary(x, cos, sin, out=buf), params={"dtype": "bfloat16"})
    copy = bench.time(case, "floor: buf.copy_(x)", lambda: buf.copy_(x))
    bench.ratio("rope.gpu_bf16_copy_fraction", copy.median_s / ours.median_s, target=0.8,
                description="copy_ time / kexue out= time on GPU in bfloat16 (fraction of copy bandwidth)")
    try:
        from flash_attn.layers.rotary import apply_rotary_emb as flash_rotary
    except ImportError:
        flash_rotary = None
    if flash_rotary is not None:
        peer = bench.time(case, "flash-attn apply_rotary_emb", lambda: flash_rotary(x.transpose(1, 2), cos.to(x.dtype), sin.to(x.dtype)))
        bench.ratio("rope.gpu_vs_flash_attn", peer.median_s / ours.median_s, description="flash-attn time / kexue time (bf16)")
