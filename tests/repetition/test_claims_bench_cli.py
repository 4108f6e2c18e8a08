"""``kexue reproduce repetition`` checks, the benchmark at quick size, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kexue.cli import main
from kexue.repetition import benchmark, claims
from kexue.report.bench import Bench


def test_measure_and_bigram_claims(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.measure, claims.bigram, claims.estimator).by_id
    assert [i for i, c in got.items() if c.status == "fail"] == []
    assert got["repetition.closed_form"].measured["max relative difference"] <= 1e-10
    order = got["repetition.order_char"].measured
    assert str(order["greedy"]["R"]) == "inf" and order["topk=5"]["R"] > order["topp=0.9"]["R"] > order["sample"]["R"]
    assert got["repetition.proven_bounds"].measured["violations"] == 0
    errors = got["repetition.estimate_error"].measured
    assert errors["worst relative error"] <= 0.01 and len(errors) > 4


@pytest.mark.slow
def test_real_model_claims(run_claims) -> None:
    got = run_claims(claims.SUITE, claims.char_gpt).by_id
    order = got["repetition.real_model_order"].measured
    assert set(order) >= {"greedy+dry", "sample+dry"} and str(order["greedy"]["R (model's P)"]) == "inf"
    assert order["greedy+dry"]["R (model's P)"] < float("inf")  # DRY makes greedy's R finite
    assert -1 <= order["Spearman(R model P, loop rate)"] <= 1
    assert abs(sum(v["share of loop tokens"] for v in got["repetition.inflow"].measured["top tokens"].values())) <= 1


def test_quick_benchmark_meets_accuracy_and_agrees_with_python() -> None:
    bench = Bench("repetition", quick=True, repeats=1)
    for case in benchmark.BENCH.cases:
        case(bench)  # raises if the vectorised metrics disagree with the plain-Python ones
    ratios = {r.id: r for r in bench.ratios}
    assert ratios["repetition.estimate_rel_error"].value <= 0.02
    assert ratios["repetition.estimate_worst_rel_error"].value <= 0.01
    assert ratios["repetition.estimate_seconds_50k"].value > 0 and ratios["repetition.dry_overhead"].value > 0
    P = benchmark.topk_matrix(300)
    assert np.allclose(P.sum(axis=1), 1) and P.nnz <= 300 * 40


def test_cli_analyze_and_metrics(tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log. " * 20)
    assert (
        main(["repetition", "analyze", str(corpus), "--level", "word", "--decoding", "greedy,topk=2,sample", "--json"])
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    rows = {r["rule"]: r for r in payload["rules"]}
    assert rows["topk=2"]["r"] >= rows["sample"]["r"] > 0
    assert rows["greedy"]["r"] == "inf"  # strict JSON, as in results.json
    gens = tmp_path / "gens.txt"
    gens.write_text("a b c a b c a b c\nthe quick brown fox\n")
    assert main(["repetition", "metrics", str(gens), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["sequences"] == 2 and metrics["loop rate"] == 0.5
    assert main(["repetition", "analyze", str(corpus), "--decoding", "beam=3"]) == 2
    err = capsys.readouterr().err
    assert "beam=3" in err and len(err.strip().splitlines()) == 1
    assert main(["repetition", "metrics", str(tmp_path / "missing.txt")]) == 2
