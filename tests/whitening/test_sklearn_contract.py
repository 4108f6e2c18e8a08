"""scikit-learn's own estimator test suite, run on kexue's estimators (the installed version's checks).

No check is skipped or expected to fail on kexue's side: ``parametrize_with_checks`` runs every
check that the estimators' tags select (the defaults of TransformerMixin/BaseEstimator: dense
float input, no NaN, no y; FlowWhitening declares ``preserves_dtype = ["float32"]`` because it
computes in float32). The only skips are scikit-learn's own: its array-API checks skip themselves
unless the environment sets ``SCIPY_ARRAY_API=1``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from kexue.whitening import Whitening
from kexue.whitening.flow import FlowWhitening

ESTIMATORS = [
    Whitening(),
    Whitening(n_components=1, gamma=0.5, shrinkage=0.1),
    FlowWhitening(n_layers=2, hidden=8, epochs=2),
]


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_set_params_after_fit_changes_the_map() -> None:
    """The fitted map follows the parameters: no cached kernel survives set_params."""
    x = np.random.default_rng(0).standard_normal((200, 6))
    w = Whitening().fit(x)
    assert w.transform(x).shape == (200, 6)
    before = dict(w.__dict__)
    w.transform(x)
    assert w.__dict__.keys() == before.keys()  # transform leaves the estimator's state alone
    w.set_params(n_components=2)
    assert w.transform(x).shape == (200, 2) and w.kernel_.shape == (6, 2)
    w.set_params(gamma=0.0)
    np.testing.assert_allclose(np.linalg.norm(w.kernel_, axis=0), 1.0, rtol=1e-12)  # a rotation: unit columns
    w.partial_fit(x[:10] * 5)  # more data: a new map
    assert not np.allclose(w.transform(x), Whitening(n_components=2, gamma=0.0).fit(x).transform(x))


def test_torch_inputs_keep_dtype_device_and_get_the_same_checks() -> None:
    x = torch.randn(100, 5, dtype=torch.float32)
    w = Whitening().fit(x)
    z = w.transform(x)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32
    with pytest.raises(ValueError, match="X has 4 features, but Whitening is expecting 5 features as input"):
        w.transform(x[:, :4])
    with pytest.raises(ValueError, match="Complex data not supported"):
        w.transform(torch.randn(3, 5, dtype=torch.complex64))
    with pytest.raises(ValueError, match="Reshape your data"):
        w.transform(x[0])
    with pytest.raises(ValueError, match=r"shape \(0, 5\)"):
        Whitening().fit(x[:0])
