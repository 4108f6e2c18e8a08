"""Encoding several poolings in one pass: batching by token count, and the encodings cache."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.data import embedded_model_path
from kexue.whitening import pooling

# lengths from 1 to ~30 tokens, shuffled, with a duplicate: batches of 4 mix them only after sorting
SENTENCES = [
    "ok",
    "A man is playing a large flute on a stage in front of a crowd of people at night.",
    "The cat sat.",
    "Two dogs run across a snowy field while a child watches them from the porch of a wooden house nearby.",
    "Stocks fell.",
    "ok",
    "She is reading the newspaper in the kitchen.",
    "A woman slices an onion.",
]


def test_batched_by_token_count_equals_one_sentence_at_a_time() -> None:
    together = pooling.encode_poolings(embedded_model_path(), SENTENCES, poolings=pooling.POOLINGS, batch_size=4)
    for i, sentence in enumerate(SENTENCES):
        alone = pooling.encode_poolings(embedded_model_path(), [sentence], poolings=pooling.POOLINGS, batch_size=1)
        for name in pooling.POOLINGS:  # padding and the order of the batches change nothing but rounding
            np.testing.assert_allclose(together[name][i], alone[name][0], rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(together["cls"][0], together["cls"][5])  # the duplicate, in two different batches


def test_cache_hit_equals_a_fresh_pass_and_keys_follow_their_inputs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KEXUE_NO_CACHE", raising=False)
    seen: list[int] = []
    first, hit = pooling.cached_encode_poolings(embedded_model_path(), SENTENCES, progress=seen.append)
    assert not hit and sum(seen) == len(SENTENCES)
    entries = list((tmp_path / "encodings").glob("*.npz"))
    assert len(entries) == 1 and not list((tmp_path / "encodings").glob(".*"))  # no temporary left behind
    again, hit = pooling.cached_encode_poolings(embedded_model_path(), SENTENCES, progress=seen.append)
    assert hit and sum(seen) == 2 * len(SENTENCES)
    for name in pooling.POOLINGS:
        np.testing.assert_array_equal(again[name], first[name])
    key = pooling.encoding_cache_key(embedded_model_path(), SENTENCES, poolings=pooling.POOLINGS, max_length=256)
    assert entries[0].stem == key
    assert (
        pooling.encoding_cache_key(embedded_model_path(), SENTENCES[::-1], poolings=pooling.POOLINGS, max_length=256)
        != key
    )
    assert pooling.encoding_cache_key(embedded_model_path(), SENTENCES, poolings=["cls"], max_length=256) != key
    assert (
        pooling.encoding_cache_key(embedded_model_path(), SENTENCES, poolings=pooling.POOLINGS, max_length=128) != key
    )


def test_the_key_reads_the_model_files_contents(tmp_path) -> None:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(embedded_model_path(), copy)
    key = pooling.encoding_cache_key(copy, SENTENCES, poolings=pooling.POOLINGS, max_length=256)
    assert key == pooling.encoding_cache_key(
        embedded_model_path(), SENTENCES, poolings=pooling.POOLINGS, max_length=256
    )  # contents, not paths
    config = copy / "config.json"
    config.write_text(config.read_text().replace("}", ', "kexue_test": 1}', 1))
    assert pooling.encoding_cache_key(copy, SENTENCES, poolings=pooling.POOLINGS, max_length=256) != key


def test_damaged_entry_and_no_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KEXUE_NO_CACHE", raising=False)
    key = pooling.encoding_cache_key(embedded_model_path(), SENTENCES, poolings=pooling.POOLINGS, max_length=256)
    (tmp_path / "encodings").mkdir()
    (tmp_path / "encodings" / f"{key}.npz").write_bytes(b"not an npz file")
    vectors, hit = pooling.cached_encode_poolings(embedded_model_path(), SENTENCES)
    assert not hit and vectors["cls"].shape == (len(SENTENCES), 384)
    assert pooling.cached_encode_poolings(embedded_model_path(), SENTENCES)[1]  # replaced by a good entry
    monkeypatch.setenv("KEXUE_NO_CACHE", "1")
    assert not pooling.cached_encode_poolings(embedded_model_path(), SENTENCES)[1]


@pytest.mark.parametrize("value", ["", "0"])
def test_no_cache_values_that_keep_the_cache(tmp_path, monkeypatch, value: str) -> None:
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KEXUE_NO_CACHE", value)
    pooling.cached_encode_poolings(embedded_model_path(), SENTENCES[:2])
    assert pooling.cached_encode_poolings(embedded_model_path(), SENTENCES[:2])[1]
