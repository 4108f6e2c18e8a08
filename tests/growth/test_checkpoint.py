"""grow_checkpoint: the library function behind ``kexue grow``: sharded in and out, atomic, reloadable."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from kexue.growth.checkpoint import grow_checkpoint
from kexue.growth.parity import float64_norms, max_logit_difference


def _small(path, shard: str | None = None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    (path / "tokenizer_config.json").write_text("{}")  # stands for the tokenizer files that travel along
    return model


def test_sharded_in_and_out_reloads_with_the_same_function(tmp_path) -> None:
    small = _small(tmp_path / "small", shard="20KB")
    assert (tmp_path / "small" / "model.safetensors.index.json").exists()  # the input is sharded
    report = grow_checkpoint(tmp_path / "small", tmp_path / "large", width=2, depth=2, max_shard_size="60KB")
    out = tmp_path / "large"
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    assert (out / "tokenizer_config.json").exists() and json.loads((out / "growth_parity.json").read_text()) == report
    assert report["float64"]["max_abs"] <= 1e-10 and report["parameters"]["large"] > 4 * report["parameters"]["small"]
    large = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).eval()
    assert large.config.hidden_size == 64 and large.config.num_hidden_layers == 4
    probe = {"input_ids": torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))}
    with float64_norms():
        assert max_logit_difference(small.double().eval(), large, probe) <= 1e-6  # the checkpoint stores float32


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    _small(tmp_path / "small")

    def broken(self, *a, **k):
        a[0].mkdir(parents=True, exist_ok=True)
        (a[0] / "partial.bin").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        grow_checkpoint(tmp_path / "small", tmp_path / "large", width=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # neither the output nor its temporary folder


def test_a_mixture_of_experts_checkpoint_grows_experts_width_and_depth(tmp_path) -> None:
    from kexue.growth.zoo import randomized, tiny_model

    small = randomized(tiny_model("mixtral"), dtype=torch.float32)
    small.save_pretrained(tmp_path / "small")
    report = grow_checkpoint(tmp_path / "small", tmp_path / "large", experts=2, width=2, depth=2)
    assert report["experts"] == 2 and report["float64"]["max_abs"] <= 1e-10
    large = AutoModelForCausalLM.from_pretrained(tmp_path / "large")
    assert (large.config.num_local_experts, large.config.num_experts_per_tok) == (8, 4)
    assert (large.config.hidden_size, large.config.num_hidden_layers) == (32, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"experts": 0}, ValueError, "experts=0"),
        ({"width": 0}, ValueError, "width=0"),
        ({}, ValueError, "nothing to do"),
        ({"width": 2, "mode": "wide"}, ValueError, "mode='wide'"),
        ({"width": 2, "noise": -1.0}, ValueError, "noise=-1.0"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, error, match: str) -> None:
    _small(tmp_path / "small")
    with pytest.raises(error, match=match):
        grow_checkpoint(tmp_path / "small", tmp_path / "large", **kwargs)
    assert not (tmp_path / "large").exists()


def test_the_grown_size_is_planned_on_meta_before_writing(tmp_path, monkeypatch) -> None:
    """plan_checkpoint reads config.json only (no weights: deleting them changes nothing); the plan is
    the size of what grow_checkpoint then writes, and dry_run writes nothing."""
    from kexue.growth.checkpoint import plan_checkpoint

    _small(tmp_path / "small")
    report = grow_checkpoint(tmp_path / "small", tmp_path / "large", width=2, depth=2, ffn=100)
    (tmp_path / "small" / "model.safetensors").unlink()
    plan = plan_checkpoint(tmp_path / "small", width=2, depth=2, ffn=100)
    assert report["planned"] == plan
    large = AutoModelForCausalLM.from_pretrained(tmp_path / "large")
    n = sum(p.numel() for p in large.parameters())
    assert plan["large"] == {"parameters": n, "bytes": 4 * n, "dtypes": {"float32": {"parameters": n, "bytes": 4 * n}}}
    assert plan["small"]["parameters"] == report["parameters"]["small"] and report["parameters"]["large"] == n
    assert grow_checkpoint(tmp_path / "small", tmp_path / "dry", width=2, dry_run=True) == {
        "planned": plan_checkpoint(tmp_path / "small", width=2)
    }
    assert not (tmp_path / "dry").exists()
    with pytest.raises(ValueError, match="dry_run=1"):
        grow_checkpoint(tmp_path / "small", tmp_path / "dry", width=2, dry_run=1)
