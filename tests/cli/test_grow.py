"""``kexue grow`` writes a checkpoint that reloads with from_pretrained, and a parity report."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from kexue.cli import main


def test_grow_gpt2_width_and_depth(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32)).save_pretrained(tmp_path / "small")
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "large"), "--width", "2", "--depth", "2"]) == 0
    report = json.loads((tmp_path / "large" / "growth_parity.json").read_text())
    assert report["float64"]["max_abs"] <= 1e-10 and report["float32"]["max_rel"] <= 1e-4
    large = AutoModelForCausalLM.from_pretrained(tmp_path / "large")
    assert large.config.n_embd == 32 and large.config.n_layer == 4 and large.config.n_head == 8
    capsys.readouterr()
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "large")]) == 2  # exists / nothing to do
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
