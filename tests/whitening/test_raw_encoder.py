"""The raw masked-LM encoder: BERT's corruption, a loss that falls, a cached and reloadable folder."""

from __future__ import annotations

import json

import pytest
import torch

from kexue.whitening import raw_encoder
from kexue.whitening.raw_encoder import PretrainConfig, pretrain_raw_encoder

pytest.importorskip("transformers")

TINY = PretrainConfig(
    hidden=32, layers=1, heads=2, intermediate=64, max_length=16, batch_size=8, steps=12, lr=3e-3, warmup=2
)
SENTENCES = [
    f"the {a} sat on the {b} near a {c}"
    for a in ("cat", "dog", "bird")
    for b in ("mat", "wall", "road")
    for c in ("tree", "house", "car", "boat")
]


def test_bert_corruption_rates() -> None:
    from transformers import AutoTokenizer

    from kexue.data import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    ids = torch.randint(1000, 20000, (400, 40))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    corrupted, chosen, targets = raw_encoder._mask(
        ids, special, PretrainConfig(), tokenizer, torch.Generator().manual_seed(0)
    )
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS]/[SEP] are never chosen
    assert abs(chosen.float().mean().item() / (38 / 40) - 0.15) < 0.01
    masked = (corrupted[chosen] == tokenizer.mask_token_id).float().mean().item()
    kept = (corrupted[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # and about 10 % random pieces
    assert torch.equal(targets, ids[chosen]) and torch.equal(corrupted[~chosen], ids[~chosen])


def test_pretraining_learns_caches_and_loads(tmp_path, monkeypatch) -> None:
    from transformers import AutoModel

    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    folder = pretrain_raw_encoder(TINY, sentences=SENTENCES * 4)
    log = json.loads((folder / "pretraining.json").read_text())
    assert len(log["losses"]) == 12 and log["losses"][-1] < log["losses"][0]
    assert folder.parent == tmp_path / "raw-encoder" and not list(folder.parent.glob("*.tmp-*"))
    again = pretrain_raw_encoder(TINY, sentences=SENTENCES * 4)
    assert again == folder  # the cache: the same settings and corpus are not trained twice
    model = AutoModel.from_pretrained(str(folder))
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    other = pretrain_raw_encoder(TINY, sentences=SENTENCES * 3)
    assert other != folder  # another corpus is another key


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("hidden", 31, "multiple of heads"),
        ("lr", 0.0, "lr=0.0"),
        ("mask_probability", 1.5, "mask_probability=1.5"),
        ("steps", 0, "steps=0"),
    ],
)
def test_bad_settings_are_named(field: str, value, match: str) -> None:
    import dataclasses

    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **{field: value}).validate()


def test_a_corpus_smaller_than_a_batch_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        pretrain_raw_encoder(TINY, sentences=SENTENCES[:3])
