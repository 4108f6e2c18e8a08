"""``kexue bench growth``: growing a checkpoint is I/O-bound.

Case A (CPU): a randomly initialised LLaMA-style checkpoint (hidden 768, 12 layers, 12 heads,
feed-forward 2048, vocabulary 32,000, untied: 134M parameters; ``--quick``: hidden 256, 4
layers, vocabulary 8,000) is written to disk in float32 safetensors. A fresh process then loads
it with ``from_pretrained``, widens it by 2 (heads mode: 438M parameters) and saves the result
with ``save_pretrained``, timing each phase and tracking the peak resident memory above the
process's baseline (after imports).

Ratios: ``growth.time_vs_load_save`` ((load + grow + save) / (load + save), target <= 2: the
grow step costs at most one more load-and-save), ``growth.memory_vs_models`` (peak RSS growth
during load + grow / (small + large float32 bytes), target <= 1.2, the worst of the runs: the
bound must hold in every run), and ``growth.memory_with_save_vs_models`` (the same, including
``save_pretrained``; reported). ``widen`` builds every repeated or tiled matrix in one
allocation and scales it in place, so no temporary the size of the largest matrix exists.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kexue.data import quiet_offline_transformers
from kexue.growth.widen import widen
from kexue.report.bench import Bench, BenchSuite, CaseResult, PeakMemory, run_in_fresh_process

BENCH = BenchSuite("growth")
# phase -> the implementation name it is reported under
_PHASES = {"load": "from_pretrained (small)", "grow": "kexue widen(k=2)", "save": "save_pretrained (large)"}


def _shape(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4, vocab_size=8000)
    return dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vocab_size=32000)


def _write_small(folder: str, quick: bool) -> int:
    """In a fresh process: write the small random checkpoint; its parameter count."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_shape(quick), tie_word_embeddings=False, max_position_embeddings=2048))
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _grow_child(small_dir: str, out_dir: str) -> dict[str, float]:
    """In a fresh process: load, widen by 2, save; seconds per phase and peak RSS growth
    (above the baseline taken after the module's imports)."""
    quiet_offline_transformers()
    torch.set_grad_enabled(False)
    memory = PeakMemory("cpu")
    base = memory.start()
    t0 = time.perf_counter()
    small = LlamaForCausalLM.from_pretrained(small_dir, dtype=torch.float32)
    t1 = time.perf_counter()
    large = widen(small, 2)
    t2 = time.perf_counter()
    peak_grow = memory.stop(base)
    large.save_pretrained(out_dir)
    t3 = time.perf_counter()
    return {
        "load": t1 - t0,
        "grow": t2 - t1,
        "save": t3 - t2,
        "peak_grow": peak_grow,
        "peak_all": memory.stop(base),
        "small_bytes": sum(p.numel() * p.element_size() for p in small.parameters()),
        "large_bytes": sum(p.numel() * p.element_size() for p in large.parameters()),
    }


@BENCH.case
def grow_checkpoint(bench: Bench) -> None:
    if bench.device != "cpu":
        return  # growing is a CPU / disk job
    runs = 1 if bench.quick else 2
    with tempfile.TemporaryDirectory() as tmp:
        small_dir = str(Path(tmp) / "small")
        n_small = run_in_fresh_process(__name__, "_write_small", small_dir, bench.quick, timeout=1800)
        results = [
            run_in_fresh_process(__name__, "_grow_child", small_dir, str(Path(tmp) / f"large{i}"), timeout=1800)
            for i in range(runs)
        ]
    best = min(results, key=lambda r: r["load"] + r["grow"] + r["save"])
    case = f"A: LLaMA-style {n_small / 1e6:.0f}M -> widen x2, float32 safetensors, fresh process"
    params = {**_shape(bench.quick), "small_params": n_small, "runs": runs}
    for phase in ("load", "grow", "save"):
        times = [r[phase] for r in results]
        peak = int(best["peak_grow"]) if phase == "grow" else (int(best["peak_all"]) if phase == "save" else None)
        bench.cases.append(
            CaseResult(
                technique=bench.technique,
                case=case,
                impl=_PHASES[phase],
                median_s=min(times),
                times_s=times,
                peak_bytes=peak,
                params=params,
            )
        )
    models = best["small_bytes"] + best["large_bytes"]
    bench.ratio(
        "growth.time_vs_load_save",
        (best["load"] + best["grow"] + best["save"]) / (best["load"] + best["save"]),
        target=2.0,
        higher_is_better=False,
        description="(load + grow + save) / (load + save), best of the runs",
    )
    bench.ratio(
        "growth.memory_vs_models",
        max(r["peak_grow"] for r in results) / models,
        target=1.2,
        higher_is_better=False,
        description=f"peak RSS growth during load + grow / (small + large float32 bytes = {models / 2**30:.2f} GiB), "
        f"worst of the runs",
    )
    bench.ratio(
        "growth.memory_with_save_vs_models",
        max(r["peak_all"] for r in results) / models,
        higher_is_better=False,
        description="the same including save_pretrained (transformers' saving code, reported), worst of the runs",
    )
