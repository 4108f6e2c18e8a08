"""The whitened SentenceTransformer saves and loads with plain sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.data import embedded_model_path
from kexue.whitening import Whitening
from kexue.whitening.st_module import add_whitening

SENTENCES = [f"{a} {b} is on the table" for a in ("a", "the", "one", "my") for b in ("cat", "cup", "book", "phone", "key", "pen")]


def test_whitened_model_round_trip(tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedded_model_path()), device="cpu")
    raw = model.encode(SENTENCES, convert_to_numpy=True)
    w = Whitening(8).fit(raw.astype(np.float64))
    add_whitening(model, w)
    got = model.encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(got, w.transform(raw.astype(np.float64)), rtol=1e-4, atol=1e-4)
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    assert dimension() == 8
    model.save(str(tmp_path / "whitened"))
    # sentence-transformers >= 6 asks for consent before importing a module class it does not ship
    reloaded = SentenceTransformer(str(tmp_path / "whitened"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(reloaded.encode(SENTENCES, convert_to_numpy=True), got, rtol=1e-5, atol=1e-5)


def test_pooling_last_avg_gives_the_models_own_cosines() -> None:
    from sentence_transformers import SentenceTransformer

    from kexue.whitening.pooling import encode_poolings

    ours = encode_poolings(embedded_model_path(), SENTENCES, ["last-avg", "cls", "layers:0,-1"])
    st = SentenceTransformer(str(embedded_model_path()), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    unit = ours["last-avg"] / np.linalg.norm(ours["last-avg"], axis=1, keepdims=True)
    np.testing.assert_allclose(unit, st, atol=1e-5)  # all-MiniLM-L6-v2 = mean pooling + normalisation
    assert not np.allclose(ours["cls"], ours["last-avg"]) and ours["layers:0,-1"].shape == (24, 384)


@pytest.mark.parametrize("name", ["max", "layers:", "layers:a,b"])
def test_unknown_pooling(name: str) -> None:
    from kexue.whitening.pooling import parse_pooling

    with pytest.raises(ValueError, match="pooling"):
        parse_pooling(name)
