"""``kexue bench``: bench.json schema, and exit 1 when a target is missed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kexue.cli import main
from kexue.report import registry
from kexue.report.bench import Bench, BenchSuite


def _fake_bench(monkeypatch: pytest.MonkeyPatch, ratio: float) -> None:
    suite = BenchSuite("orthogonal")

    @suite.case
    def tiny(bench: Bench) -> None:
        ours = bench.time("tiny", "kexue", lambda: sum(range(100)))
        bench.time("tiny", "peer", lambda: sum(range(1000)))
        bench.ratio("orthogonal.fake_ratio", ratio, target=5.0, description="fake")
        assert ours.median_s >= 0

    monkeypatch.setattr(registry, "load", lambda table, technique: suite)


def test_bench_json_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_bench(monkeypatch, ratio=6.0)
    assert main(["bench", "orthogonal", "--out", str(tmp_path), "--repeats", "2"]) == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert set(payload) >= {"machine", "cases", "ratios"}
    assert payload["machine"]["torch"] and payload["machine"]["device"] == "cpu"
    assert [(c["technique"], c["case"], c["impl"]) for c in payload["cases"]] == [
        ("orthogonal", "tiny", "kexue"),
        ("orthogonal", "tiny", "peer"),
    ]
    assert all(c["median_s"] >= 0 and len(c["times_s"]) == 2 for c in payload["cases"])
    assert payload["ratios"] == [
        {
            "id": "orthogonal.fake_ratio",
            "value": 6.0,
            "target": 5.0,
            "higher_is_better": True,
            "met": True,
            "description": "fake",
        }
    ]


def test_missed_target_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_bench(monkeypatch, ratio=2.0)
    assert main(["bench", "orthogonal", "--out", str(tmp_path), "--repeats", "1"]) == 1
    assert "targets missed: orthogonal.fake_ratio" in capsys.readouterr().err


def test_orthogonal_benchmark_quick(tmp_path: Path) -> None:
    """The real orthogonal benchmark at --quick size (100,000 x 768), one repeat."""
    code = main(["bench", "orthogonal", "--quick", "--repeats", "1", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "bench.json").read_text())
    ids = [r["id"] for r in payload["ratios"]]
    assert ids == [
        "orthogonal.apply_vs_matmul",
        "orthogonal.apply_vs_clone",
        "orthogonal.apply_vs_hugepage_clone",
        "orthogonal.apply_vs_copy",
    ]
    impls = {c["impl"] for c in payload["cases"]}
    assert {
        "dense T + matmul (reflection)",
        "floor: x.clone()",
        "floor: buf.copy_(x)",
        "kexue apply out= (reflection)",
    } <= impls
    matmul = payload["ratios"][0]
    assert matmul["target"] == 5.0 and matmul["higher_is_better"] is True
    assert code == (0 if matmul["met"] else 1)


def test_case_needing_a_missing_extra_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = BenchSuite("orthogonal")

    @suite.case
    def peer(bench: Bench) -> None:
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    @suite.case
    def ours(bench: Bench) -> None:
        bench.ratio("orthogonal.fake_ratio", 6.0, target=5.0)

    monkeypatch.setattr(registry, "load", lambda table, technique: suite)
    assert main(["bench", "orthogonal", "--out", str(tmp_path), "--repeats", "1"]) == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert [r["id"] for r in payload["ratios"]] == ["orthogonal.fake_ratio"]
    assert [(s["technique"], s["case"]) for s in payload["skipped"]] == [("orthogonal", "peer")]
    assert "pip install 'kexue[sklearn]'" in payload["skipped"][0]["reason"]
    assert "kexue bench: skipped orthogonal.peer" in capsys.readouterr().err
