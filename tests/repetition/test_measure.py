"""The repetition measure: closed form = series = eigenvalues; bounds; hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import kexue.repetition
import kexue.repetition.transition
from kexue.repetition.measure import bounds, estimate_r, exact_r, r_eigen, r_series, spectral_radius, zeta
from kexue.repetition.transition import (
    Decoding,
    Vocabulary,
    apply_decoding,
    parse_decodings,
    tokenize,
    transition_matrix,
)


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
    assert r_series(P, terms=200) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_equals_series_and_eigenvalues(seed: int) -> None:
    P = apply_decoding(_random_p(40, seed), "topk=5")
    r = exact_r(P)
    assert r_eigen(P) == pytest.approx(r, rel=1e-10)
    assert r_series(P, terms=400) == pytest.approx(r, rel=1e-10)
    assert r_series(P, terms=3) < r  # partial sums are lower bounds


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
    vocab = Vocabulary.build(tokenize("abab cab", level="char"))
    ids = vocab.encode(tokenize("abab cab", level="char"))
    P = transition_matrix(ids, len(vocab))
    a, b = vocab.tokens.index("a"), vocab.tokens.index("b")
    assert P[a, b] == pytest.approx(1.0)  # 'a' is always followed by 'b'
    assert np.allclose(P.sum(1), 1)
    S = transition_matrix(ids, len(vocab), sparse=True)
    assert np.allclose(S.toarray(), P)
    smooth = transition_matrix(ids, len(vocab), alpha=1.0)
    assert zeta(smooth) == 1.0 and zeta(P) < 1
    assert tokenize("Hello, world!", level="word") == ["hello", ",", "world", "!"]
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


def _random_sparse(n: int, k: int, seed: int) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    P = sp.csr_array((rng.random(n * k), (np.repeat(np.arange(n), k), rng.integers(0, n, n * k))), shape=(n, n))
    P.sum_duplicates()
    return sp.csr_array(sp.diags_array(1 / np.asarray(P.sum(axis=1)).ravel()) @ P)


def test_exact_power_traces_and_blocks() -> None:
    from kexue.repetition.measure import power_traces

    P = _random_sparse(200, 4, 0)
    Q = P.multiply(P).tocsr()
    traces = power_traces(Q)
    dense = Q.toarray()
    assert len(traces) > 4
    assert np.allclose(
        traces, [np.trace(np.linalg.matrix_power(dense, k)) for k in range(1, len(traces) + 1)], rtol=1e-12, atol=0
    )
    assert len(power_traces(Q, budget=1.0)) == 2  # no budget: Tr Q and Tr Q² only
    # a reducible P (transient tokens, two closed classes): every block solved exactly = dense LU
    rng = np.random.default_rng(1)
    D = rng.random((60, 60)) * (rng.random((60, 60)) < 0.15)
    D[:20, 20:] = 0  # tokens 0..19 never leave: a closed class
    D[20:40, 40:] = 0
    D[20:40, :20] = 0  # 20..39 closed too
    D[np.arange(60), np.arange(60)] += 0.05
    D /= D.sum(axis=1, keepdims=True)
    est = estimate_r(sp.csr_array(D))
    assert est.blocks > 2 and est.stderr == 0 and est.stochastic_tokens == 0
    assert est.value == pytest.approx(exact_r(D), rel=1e-12)


@pytest.mark.parametrize("seed", [0])
def test_estimate_reaches_its_error_and_the_error_bar_is_honest(seed: int) -> None:
    P = _random_sparse(800, 3, seed)  # sparse: many short cycles, a long tail (λ₁ large)
    r = exact_r(P.toarray())
    est = estimate_r(P, dense_block=1, seed=seed)  # every block stochastic
    assert est.converged and est.stochastic_tokens > 0 and est.relative_error <= 0.005
    assert abs(est.value - r) <= 4 * est.stderr + 1e-12 * r
    fixed = estimate_r(P, rel_error=None, probes=4, dense_block=1, seed=seed)  # no adaptivity: a wider error bar
    assert fixed.probes < est.probes and fixed.stderr > est.stderr


def test_hutch_plus_plus_beats_hutchinson_on_a_low_rank_tail() -> None:
    # every row puts 90 % on the same three popular tokens: Q's tail is nearly rank one (the Perron
    # part), which the sketch takes exactly; plain probes see it only through their variance
    rng = np.random.default_rng(0)
    n = 400
    popular = np.zeros(n)
    popular[:3] = [0.6, 0.3, 0.1]
    noise = rng.random((n, n)) * (rng.random((n, n)) < 0.03)
    noise[np.arange(n), rng.integers(0, n, n)] += 1
    P = sp.csr_array(0.9 * popular[None, :] + 0.1 * noise / noise.sum(axis=1, keepdims=True))
    r = exact_r(P.toarray())
    errors = {
        m: [
            abs(estimate_r(P, rel_error=None, probes=16, method=m, dense_block=1, seed=s).value - r) / r
            for s in range(3)
        ]
        for m in ("hutch++", "hutchinson")
    }
    assert max(errors["hutch++"]) * 100 < min(errors["hutchinson"]) and min(errors["hutchinson"]) > 1e-4


def test_inflow_and_perron_vectors() -> None:
    from kexue.repetition.measure import inflow, perron_vectors

    P = apply_decoding(_random_p(30, 7), "topk=4")
    Q = P**2
    lam, v, u = perron_vectors(Q)
    assert lam == pytest.approx(spectral_radius(P), rel=1e-10)
    assert np.allclose(Q @ v, lam * v, atol=1e-10) and np.allclose(u @ Q, lam * u, atol=1e-10)
    flow = inflow(P)
    assert flow.perron.sum() == pytest.approx(1) and flow.loop_share.sum() == pytest.approx(1)
    # loop_share is the exact split of R over starting tokens
    r_i = np.diag(np.linalg.inv(np.eye(30) - Q)) - 1
    assert np.allclose(flow.loop_share * exact_r(P), r_i, rtol=1e-10)
    # long loops: (Q^k)_ii / Tr Q^k tends to the Perron share
    Qk = np.linalg.matrix_power(Q / lam, 400)
    assert np.allclose(np.diag(Qk) / np.trace(Qk), flow.perron, atol=1e-8)


def test_r_with_dry_equals_the_cycle_sum_and_its_limits() -> None:
    import itertools

    from kexue.repetition.analysis import dry_penalised, r_with_dry

    P = _random_p(3, 2, power=1.0)
    D = apply_decoding(P, "topk=2")
    mult, base, allowed = 2.0, 3.0, 2
    G = {j: dry_penalised(P, "topk=2", delta=mult * base ** (j - allowed)) for j in range(allowed, 9)}
    brute = 0.0  # the event's probability summed over every cycle w1..wk, second walk penalised
    for k in range(1, 9):
        for w in itertools.product(range(3), repeat=k):
            steps = [(w[j], w[(j + 1) % k]) for j in range(k)]
            first = np.prod([D[a, b] for a, b in steps])
            second = np.prod([D[a, b] if j < allowed else G[j][a, b] for j, (a, b) in enumerate(steps, start=1)])
            brute += first * second
    assert r_with_dry(P, "topk=2", multiplier=mult, base=base, allowed_length=allowed) == pytest.approx(brute, rel=1e-9)
    assert r_with_dry(P, "sample", multiplier=1e-9) == pytest.approx(exact_r(P), rel=1e-6)  # no penalty: the plain R
    g = dry_penalised(P, "sample", delta=1.0)  # closed form for sampling: p e^-δ / (1 − p + p e^-δ)
    assert np.allclose(g, P * math.exp(-1) / (1 - P + P * math.exp(-1)))
    assert math.isfinite(r_with_dry(P, "greedy", multiplier=0.8)) and exact_r(apply_decoding(P, "greedy")) == math.inf


def test_analyze_explains_missing_bounds() -> None:
    from kexue.repetition.analysis import analyze

    rows = {r.rule: r for r in analyze(_random_p(20, 1), parse_decodings("greedy,topk=3"))}
    assert (
        rows["greedy"].lower == math.inf
        and rows["greedy"].article_estimate == math.inf
        and "ζn = 1" in rows["greedy"].note
    )
    assert math.isfinite(rows["topk=3"].lower) and rows["topk=3"].note == ""


def test_a_power_series_cut_at_max_terms_is_not_reported_as_converged() -> None:
    """λ₁ = 1 − 5e-5 needs ~10⁶ powers: cut at max_terms the value is 37 % low; the estimate
    must say so (converged False, a truncation bound covering the gap), not hide it in a tiny
    standard error."""
    P = np.array([[1 - 5e-5, 5e-5], [5e-5, 1 - 5e-5]])
    exact = estimate_r(P)  # one block of 2 <= dense_block: solved exactly
    assert exact.converged and exact.value == pytest.approx(19998.5, rel=1e-6)
    cut = estimate_r(P, dense_block=1, max_terms=10_000)
    assert not cut.converged and cut.terms == 10_000
    assert cut.value + cut.truncation >= exact.value * (1 - 1e-9) > cut.value


@pytest.mark.parametrize("make", [lambda P: P.astype(np.float32), lambda P: torch.tensor(P, dtype=torch.float32)])
def test_estimate_reads_a_dense_p_in_float64_as_exact_r_does(make) -> None:
    # estimate_r squared a dense float32 P in float32 (its dense branch was the sparse one, RUF034), so on a
    # small P solved exactly it disagreed with exact_r, which squares in float64
    P = make(_random_p(6, 0))
    assert estimate_r(P).value == exact_r(P)
    assert estimate_r(make(_random_p(300, 1))).value == pytest.approx(exact_r(make(_random_p(300, 1))), rel=1e-13)


@pytest.mark.parametrize("module", [kexue.repetition, kexue.repetition.transition])
def test_estimate_is_a_deprecated_alias_of_transition_matrix(module) -> None:
    with pytest.warns(DeprecationWarning, match=r"estimate is deprecated .* use .*transition_matrix"):
        old = module.estimate
    assert old is transition_matrix
    with pytest.warns(DeprecationWarning, match="use kexue.repetition.transition_matrix"):
        from kexue.repetition import estimate  # noqa: F401 (the old import still works)
    assert "estimate" not in kexue.repetition.__all__ and "transition_matrix" in kexue.repetition.__all__
