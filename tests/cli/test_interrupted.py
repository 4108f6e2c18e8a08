"""Interrupted work loses nothing: ``kexue`` commands killed with SIGKILL at random moments.

* ``train-embedder``: killed several times (during steps and checkpoint writes alike) and resumed
  with ``--resume`` each time, the run ends with the same weights and losses as an uninterrupted one.
* ``grow`` and ``whiten fit``: after a kill, the output either does not exist or is complete and
  valid; a rerun then succeeds.

The kill times are drawn from a seeded generator, so a failure reproduces.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SENTENCES = [
    f"sentence {i} about {w}" for i, w in enumerate(["cats", "dogs", "the sea", "music", "rain", "trains"] * 4)
]


def _kexue(*argv: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kexue", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL ``proc`` after ``seconds`` unless it ends first; whether it was killed."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def test_train_embedder_killed_and_resumed_equals_an_uninterrupted_run(
    tiny_sentence_model: str, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("\n".join(f"{s}\t{s.replace('about', 'on')}" for s in SENTENCES) + "\n")
    args = [
        "train-embedder",
        "--pairs",
        str(pairs),
        "--model",
        tiny_sentence_model,
        "--batch-size",
        "8",
        "--micro-batch-size",
        "3",
        "--epochs",
        "12",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "1",
        "--no-eval",
    ]
    start = time.perf_counter()
    _finish(_kexue(*args, "-o", str(tmp_path / "whole"), cwd=tmp_path))
    whole_seconds = time.perf_counter() - start

    rng = random.Random(15)
    kills = 0
    for _ in range(6):
        proc = _kexue(*args, "-o", str(tmp_path / "killed"), "--resume", cwd=tmp_path)
        kills += _kill_after(proc, rng.uniform(0.3, 1.0) * whole_seconds)
    assert kills >= 3, "the run finished before it could be killed: the kill times are too late"
    _finish(_kexue(*args, "-o", str(tmp_path / "killed"), "--resume", cwd=tmp_path))

    whole, killed = (json.loads((tmp_path / d / "training.json").read_text()) for d in ("whole", "killed"))
    assert killed["steps"] == whole["steps"] == 36
    assert killed["losses"] == whole["losses"]
    a, b = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "killed").glob("*.tmp-*")), "a killed run's temporary folder was not cleaned up"


def _killed_outputs_are_absent_or_valid(argv_for, valid, tmp_path: Path, seed: int) -> None:
    start = time.perf_counter()
    _finish(_kexue(*argv_for(tmp_path / "reference"), cwd=tmp_path))
    seconds = time.perf_counter() - start
    rng = random.Random(seed)
    for attempt in range(5):
        out = tmp_path / f"attempt{attempt}"
        proc = _kexue(*argv_for(out), cwd=tmp_path)
        if _kill_after(proc, rng.uniform(0.4, 1.0) * seconds):
            assert not out.exists() or valid(out), f"{out} exists but is incomplete"
        else:
            assert valid(out)


def test_grow_killed_leaves_no_or_a_complete_checkpoint(tmp_path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "small")

    def valid(out: Path) -> bool:
        report = json.loads((out / "growth_parity.json").read_text())
        grown = transformers.LlamaForCausalLM.from_pretrained(out)
        return report["depth"] == 2 and grown.config.hidden_size == 128 and grown.config.num_hidden_layers == 8

    _killed_outputs_are_absent_or_valid(
        lambda out: ["grow", str(tmp_path / "small"), "-o", str(out), "--width", "2", "--depth", "2"],
        valid,
        tmp_path,
        seed=19,
    )


def test_whiten_fit_killed_leaves_no_or_a_complete_file(tmp_path: Path) -> None:
    from kexue.whitening import Whitening

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20) + "\n")

    def valid(out: Path) -> bool:
        return Whitening.load(out).n_samples_seen_ == len(SENTENCES) * 20

    _killed_outputs_are_absent_or_valid(
        lambda out: ["whiten", "fit", "--corpus", str(corpus), "-k", "16", "-o", str(out)], valid, tmp_path, seed=23
    )
