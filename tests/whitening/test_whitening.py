"""Whitening against the float64 references: the map, streaming, merging, rank deficiency, I/O."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError

from kexue.whitening import RankDeficientWarning, Whitening, reference


def _data(n: int = 500, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * np.logspace(0, -2, d)  # anisotropic, like sentence vectors
    return rng.standard_normal((n, d)) @ mixing + 3.0 * rng.standard_normal(d)


def test_whitened_data_has_zero_mean_and_identity_covariance() -> None:
    x = _data()
    z = Whitening().fit_transform(x)
    mu, sigma = reference.mean_covariance(z)
    assert np.abs(mu).max() < 1e-12
    assert np.abs(sigma - np.eye(x.shape[1])).max() < 1e-10


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(1, 12),
    beta=st.sampled_from([0.0, 0.5, 1.0]),
    gamma=st.sampled_from([0.0, 0.5, 1.0]),
    ddof=st.integers(0, 1),
)
def test_kernel_and_bias_equal_the_reference(k: int, beta: float, gamma: float, ddof: int) -> None:
    x = _data(seed=k)
    w = Whitening(n_components=k, beta=beta, gamma=gamma, ddof=ddof).fit(x)
    kernel, bias = reference.whitening_reference(x, n_components=k, beta=beta, gamma=gamma, ddof=ddof)
    np.testing.assert_allclose(w.kernel_, kernel, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(w.bias_, bias, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.transform(x), (x - bias) @ kernel, rtol=1e-9, atol=1e-9)


def test_spec_recurrences_streaming_and_merging_equal_the_batch_fit() -> None:
    x = _data(300)
    batch = Whitening().fit(x)
    mu, sigma = reference.running_statistics(x)  # the spec's one-sample recurrences
    np.testing.assert_allclose(batch.mean_, mu, atol=1e-12)
    np.testing.assert_allclose(batch.scatter_ / len(x), sigma, atol=1e-10)
    stream = Whitening()
    for lo in range(0, 300, 37):
        stream.partial_fit(x[lo : lo + 37])
    parts = [Whitening().fit(x[:10]), Whitening().fit(x[10:200]), Whitening().fit(x[200:])]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for other in (stream, merged):
        assert other.n_samples_seen_ == 300
        np.testing.assert_allclose(other.mean_, batch.mean_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(other.scatter_, batch.scatter_, rtol=1e-12, atol=1e-10)


def test_large_offset_does_not_cancel() -> None:
    """Naive Σx, Σx² sums lose everything at an offset of 1e8; Chan's merge keeps the variance."""
    rng = np.random.default_rng(1)
    x = 1e8 + rng.standard_normal((4000, 3))
    w = Whitening()
    for lo in range(0, 4000, 100):
        w.partial_fit(x[lo : lo + 100])
    _, sigma = reference.mean_covariance(x)
    np.testing.assert_allclose(w.scatter_ / 4000, sigma, rtol=1e-6)


def test_torch_in_torch_out_float32_and_numpy_in_numpy_out() -> None:
    x = _data()
    w = Whitening(n_components=5).fit(torch.from_numpy(x).float())
    z = w.transform(torch.from_numpy(x).float())
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.shape == (500, 5)
    assert isinstance(w.transform(x), np.ndarray)
    np.testing.assert_allclose(z.numpy(), w.transform(x), rtol=1e-4, atol=1e-4)


def test_inverse_transform_round_trip_and_projection() -> None:
    x = _data()
    full = Whitening().fit(x)
    np.testing.assert_allclose(full.inverse_transform(full.transform(x)), x, atol=1e-9)
    reduced = Whitening(n_components=4).fit(x)
    pca = PCA(4).fit(x)
    np.testing.assert_allclose(
        reduced.inverse_transform(reduced.transform(x)), pca.inverse_transform(pca.transform(x)), atol=1e-8
    )


def test_matches_sklearn_pca_whiten_up_to_sign() -> None:
    x = _data(2000, 16)
    ours = Whitening(n_components=8, ddof=1).fit(x).transform(x)
    theirs = PCA(8, whiten=True, svd_solver="full").fit(x).transform(x)
    signs = np.sign((ours * theirs).sum(0))
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-8)


def test_rank_deficient_input_warns_and_stays_finite() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 10))  # 5 samples in 10 dims: rank 4 after centring
    with pytest.warns(RankDeficientWarning, match="rank 4"):  # noqa: PT031 -- transform() may warn too
        w = Whitening().fit(x)
        z = w.transform(rng.standard_normal((3, 10)))
    assert w.n_components_ == 4 and np.isfinite(z).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shrunk = Whitening(shrinkage=0.1).fit(x)
        assert shrunk.n_components_ == 10 and np.isfinite(shrunk.transform(x)).all()
    duplicated = np.repeat(_data(50, 3), 2, axis=1)  # identical feature pairs
    with pytest.warns(RankDeficientWarning):
        assert Whitening().fit(duplicated).n_components_ == 3


def test_bad_input_is_a_clear_error() -> None:
    x = _data()
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="X contains 1 non-finite value"):
        Whitening().fit(bad)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        Whitening().fit(x[0])
    with pytest.raises(ValueError, match="n_components"):
        Whitening(n_components=0).fit(x)
    with pytest.raises(ValueError, match="exceeds"):
        Whitening(n_components=13).fit(x).transform(x)
    with pytest.raises(ValueError, match="shrinkage"):
        Whitening(shrinkage=2).fit(x)
    with pytest.raises(ValueError, match="features"):
        Whitening().fit(x).partial_fit(x[:, :5])
    with pytest.raises(NotFittedError):
        Whitening().transform(x)


def test_save_load_round_trip_and_continue_fitting(tmp_path) -> None:
    x = _data()
    w = Whitening(n_components=6, beta=0.5, gamma=0.5).fit(x[:300])
    path = tmp_path / "w.safetensors"
    w.save(path)
    loaded = Whitening.load(path)
    assert loaded.get_params() == w.get_params()
    np.testing.assert_array_equal(loaded.transform(x), w.transform(x))
    loaded.partial_fit(x[300:])
    np.testing.assert_allclose(
        loaded.kernel_, Whitening(n_components=6, beta=0.5, gamma=0.5).fit(x).kernel_, rtol=1e-9, atol=1e-12
    )
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(Exception):  # noqa: B017 -- safetensors' error type for a corrupt file varies by version
        Whitening.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        Whitening.load(tmp_path / "missing.safetensors")
    assert not list(tmp_path.glob("*.tmp"))


def test_sklearn_contract() -> None:
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline

    w = Whitening(n_components=3, gamma=0.5)
    assert clone(w).get_params() == w.get_params()
    z = make_pipeline(Whitening(n_components=3)).fit_transform(_data())
    assert z.shape == (500, 3)


def test_two_gloo_processes_all_reduce_to_the_whole_fit() -> None:
    from kexue.whitening._torchrun_check import launch

    result = launch(nproc=2)
    assert result["n"] == 3000 and result["shards"] == [900, 2100]
    assert result["mean_err"] <= 1e-12 and result["scatter_rel_err"] <= 1e-12 and result["transform_err"] <= 1e-9


def test_set_params_reuses_the_decomposition_and_equals_a_fresh_fit() -> None:
    """Variant sweeps (k, β, γ, ε) after one fit give exactly what fitting each variant gives."""
    from kexue.whitening import whitening as module

    x = np.random.default_rng(3).standard_normal((500, 12)) @ np.random.default_rng(4).standard_normal((12, 12))
    fitted = Whitening().fit(x)
    fitted.transform(x)
    decomposition = module._DECOMPOSED[fitted][3]
    for params in (
        {"n_components": 5},
        {"gamma": 0.5},
        {"beta": 0.0},
        {"eps": 1e-3},
        {"n_components": 3, "gamma": 0.0},
    ):
        swept = fitted.set_params(**{**Whitening().get_params(), **params})
        np.testing.assert_array_equal(swept.transform(x), Whitening(**params).fit(x).transform(x))
        assert module._DECOMPOSED[fitted][3] is decomposition  # no second eigh
    fitted.eigenvalues_[:] = 0.0  # a caller writing into the returned array cannot corrupt the cache
    assert fitted.set_params(n_components=4).eigenvalues_[0] > 0
    fitted.set_params(shrinkage=0.1).transform(x)
    assert module._DECOMPOSED[fitted][3] is not decomposition  # shrinkage changes the covariance itself
