"""The repetition measure: closed form = series = eigenvalues; bounds; hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from kexue.repetition.measure import bounds, estimate_r, exact_r, r_eigen, r_series, spectral_radius, zeta
from kexue.repetition.transition import Decoding, Vocabulary, apply_decoding, estimate, parse_decodings, tokenize


def _random_p(n: int, seed: int, power: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) ** power
    return P / P.sum(1, keepdims=True)


def test_two_by_two_by_hand() -> None:
    # P = [[a, 1-a], [1-b, b]]: Q = P∘P, R = Tr[(I-Q)^-1] - 2 = (2 - tr Q)/det(I-Q) - 2
    a, b = 0.3, 0.6
    P = np.array([[a, 1 - a], [1 - b, b]])
    Q = P**2
    det = (1 - Q[0, 0]) * (1 - Q[1, 1]) - Q[0, 1] * Q[1, 0]
    by_hand = (2 - Q[0, 0] - Q[1, 1]) / det - 2
    assert exact_r(P) == pytest.approx(by_hand, rel=1e-14)
    assert r_eigen(P) == pytest.approx(by_hand, rel=1e-12)
    assert r_series(P, 200) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_equals_series_and_eigenvalues(seed: int) -> None:
    P = apply_decoding(_random_p(40, seed), "topk=5")
    r = exact_r(P)
    assert r_eigen(P) == pytest.approx(r, rel=1e-10)
    assert r_series(P, 400) == pytest.approx(r, rel=1e-10)
    assert r_series(P, 3) < r  # partial sums are lower bounds


def test_greedy_has_a_cycle_so_r_is_infinite() -> None:
    P = apply_decoding(_random_p(30, 3), "greedy")
    assert spectral_radius(P) == pytest.approx(1.0)
    assert exact_r(P) == math.inf and estimate_r(sp.csr_array(P)).value == math.inf


@pytest.mark.parametrize("seed", range(5))
def test_proven_bounds_hold_and_the_printed_form_can_fail(seed: int) -> None:
    P = apply_decoding(_random_p(30, seed, power=6.0), "topp=0.8")
    r = exact_r(P)
    b = bounds(P, terms=40)
    assert b.lower_trace <= r * (1 + 1e-12) and b.lower_diagonal <= r * (1 + 1e-12)
    assert r <= b.upper_lambda <= b.upper_row_sum
    assert b.row_sum_min - 1e-12 <= b.lambda1 <= b.row_sum_max + 1e-12
    assert b.row_sum_min >= 1 / 30 - 1e-12
    assert b.lower_diagonal >= b.lower_trace / 30 - 1e-12  # the per-token form is never much weaker


def test_trace_of_power_counterexample() -> None:
    P = np.array([[0.1, 0.9], [0.8, 0.2]])
    # Tr(P^2) (the paper's printed Tr P^(2k) at k = 1) against Σ_i P_ii^2 (the corrected Tr(P∘P))
    assert np.trace(P @ P) == pytest.approx(0.01 + 0.72 + 0.72 + 0.04)
    assert (np.diag(P) ** 2).sum() == pytest.approx(0.05)
    b = bounds(P, terms=30)
    assert b.paper_printed > exact_r(P)  # the printed form overshoots R: it is not a lower bound here


def test_sparse_estimate_agrees_with_exact() -> None:
    P = apply_decoding(_random_p(400, 4, power=2.0), "topk=10")
    est = estimate_r(sp.csr_array(P), probes=256, seed=1)
    assert abs(est.value - exact_r(P)) <= max(4 * est.stderr, 1e-3 * exact_r(P))


def test_estimation_from_text_and_decodings() -> None:
    vocab = Vocabulary.build(tokenize("abab cab", "char"))
    ids = vocab.encode(tokenize("abab cab", "char"))
    P = estimate(ids, len(vocab))
    a, b = vocab.tokens.index("a"), vocab.tokens.index("b")
    assert P[a, b] == pytest.approx(1.0)  # 'a' is always followed by 'b'
    assert np.allclose(P.sum(1), 1)
    S = estimate(ids, len(vocab), sparse=True)
    assert np.allclose(S.toarray(), P)
    smooth = estimate(ids, len(vocab), alpha=1.0)
    assert zeta(smooth) == 1.0 and zeta(P) < 1
    assert tokenize("Hello, world!", "word") == ["hello", ",", "world", "!"]
    dense = _random_p(20, 5)
    for rule in parse_decodings("greedy,topk=3,topp=0.5,temperature=0.5,sample"):
        out = apply_decoding(dense, rule)
        assert np.allclose(np.asarray(out.sum(1)).ravel(), 1)
        if rule.kind in ("greedy", "topk", "topp"):
            assert np.allclose(apply_decoding(sp.csr_array(dense), rule).toarray(), out)
    assert (apply_decoding(dense, "topk=3") > 0).sum(1).max() == 3


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="row-stochastic"):
        exact_r(np.ones((3, 3)))
    with pytest.raises(ValueError, match="topk"):
        parse_decodings("topk=0")
    with pytest.raises(ValueError, match="unknown rule"):
        parse_decodings("beam=4")
    assert parse_decodings("pure") == [Decoding("sample")]
