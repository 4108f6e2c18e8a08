"""The whitened SentenceTransformer saves and loads with plain sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.data import embedded_model_path
from kexue.whitening import Whitening
from kexue.whitening.st_module import add_whitening

SENTENCES = [
    f"{a} {b} is on the table" for a in ("a", "the", "one", "my") for b in ("cat", "cup", "book", "phone", "key", "pen")
]


@pytest.mark.parametrize("normalize", [None, False])
def test_whitened_model_is_a_standard_pipeline(tmp_path, normalize) -> None:
    import json

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedded_model_path()), device="cpu")
    raw = model.encode(SENTENCES, convert_to_numpy=True).astype(np.float64)
    w = Whitening(n_components=8).fit(raw)
    add_whitening(model, w, normalize=normalize)
    want = w.transform(raw)
    if normalize is None:  # all-MiniLM-L6-v2 ends with Normalize, so the whitened model does too
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    got = model.encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    assert dimension() == 8
    model.save(str(tmp_path / "whitened"))
    modules = json.loads((tmp_path / "whitened" / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    assert kinds == ["Transformer", "Pooling", "Normalize", "Dense"] + (["Normalize"] if normalize is None else [])
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)  # no kexue class to import
    dense = json.loads(next((tmp_path / "whitened").glob("3_Dense/config.json")).read_text())
    assert dense["activation_function"] == "torch.nn.modules.linear.Identity"
    reloaded = SentenceTransformer(str(tmp_path / "whitened"), device="cpu")  # no trust_remote_code
    np.testing.assert_allclose(reloaded.encode(SENTENCES, convert_to_numpy=True), got, rtol=1e-5, atol=1e-6)


def test_a_whitening_of_the_wrong_width_is_refused() -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedded_model_path()), device="cpu")
    with pytest.raises(ValueError, match="fitted on 5-d vectors but the model outputs 384-d"):
        add_whitening(model, Whitening(n_components=2).fit(np.random.default_rng(0).normal(size=(20, 5))))


def test_models_saved_with_the_old_module_still_load(tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    from kexue.whitening.st_module import WhiteningModule

    model = SentenceTransformer(str(embedded_model_path()), device="cpu")
    raw = model.encode(SENTENCES, convert_to_numpy=True).astype(np.float64)
    w = Whitening(n_components=8).fit(raw)
    model.add_module(str(len(model._modules)), WhiteningModule(w))
    model.save(str(tmp_path / "old"))
    reloaded = SentenceTransformer(str(tmp_path / "old"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(
        reloaded.encode(SENTENCES, convert_to_numpy=True), w.transform(raw), rtol=1e-4, atol=1e-5
    )


def test_pooling_last_avg_gives_the_models_own_cosines() -> None:
    from sentence_transformers import SentenceTransformer

    from kexue.whitening.pooling import encode_poolings

    ours = encode_poolings(embedded_model_path(), SENTENCES, poolings=["last-avg", "cls", "layers:0,-1"])
    st = SentenceTransformer(str(embedded_model_path()), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    unit = ours["last-avg"] / np.linalg.norm(ours["last-avg"], axis=1, keepdims=True)
    np.testing.assert_allclose(unit, st, atol=1e-5)  # all-MiniLM-L6-v2 = mean pooling + normalisation
    assert not np.allclose(ours["cls"], ours["last-avg"]) and ours["layers:0,-1"].shape == (24, 384)


@pytest.mark.parametrize("name", ["max", "layers:", "layers:a,b"])
def test_unknown_pooling(name: str) -> None:
    from kexue.whitening.pooling import parse_pooling

    with pytest.raises(ValueError, match="pooling"):
        parse_pooling(name)
