"""``kexue grow`` writes a checkpoint that reloads with from_pretrained, and a parity report."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from kexue.cli import main


def test_grow_gpt2_width_and_depth(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32)).save_pretrained(
        tmp_path / "small"
    )
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "large"), "--width", "2", "--depth", "2"]) == 0
    report = json.loads((tmp_path / "large" / "growth_parity.json").read_text())
    assert report["float64"]["max_abs"] <= 1e-10 and report["float32"]["max_rel"] <= 1e-4
    large = AutoModelForCausalLM.from_pretrained(tmp_path / "large")
    assert large.config.n_embd == 32 and large.config.n_layer == 4 and large.config.n_head == 8
    capsys.readouterr()
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "large")]) == 2  # exists / nothing to do
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_grow_llama_ffn_and_noise(tmp_path, capsys) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path / "small")
    out = tmp_path / "large"
    assert main(["grow", str(tmp_path / "small"), "-o", str(out), "--ffn", "40", "--noise", "1.0"]) == 0
    report = json.loads((out / "growth_parity.json").read_text())
    assert report["ffn"] == 40 and report["float64"]["max_abs"] <= 1e-10
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 40
    capsys.readouterr()
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "x"), "--ffn", "8"]) == 2  # smaller than 24
    err = capsys.readouterr().err
    assert "intermediate_size" in err and len(err.strip().splitlines()) == 1
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "x"), "--width", "2", "--noise", "-1"]) == 2
    assert "--noise" in capsys.readouterr().err


def test_grow_prints_the_planned_size_before_writing(tmp_path, capsys, monkeypatch) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kexue.growth import checkpoint

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path / "small")
    large = checkpoint.plan_checkpoint(tmp_path / "small", width=2)["large"]
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "dry"), "--width", "2", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["planned"]["large"] == large and not (tmp_path / "dry").exists()
    assert err.count("\n") == 1 and f"-> {large['parameters']:,} parameters" in err and "float32" in err

    seen = []
    real_write = checkpoint._write
    monkeypatch.setattr(
        checkpoint, "_write", lambda *a, **k: (seen.append(capsys.readouterr().err), real_write(*a, **k))[1]
    )
    assert main(["grow", str(tmp_path / "small"), "-o", str(tmp_path / "large"), "--width", "2"]) == 0
    # printed once the checkpoint loaded (a bad one gives its one error line alone), before anything was written
    assert seen and f"-> {large['parameters']:,} parameters" in seen[0]
