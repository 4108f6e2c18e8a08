"""``kexue reproduce``: files written, schema, exit code 1 on a failed claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kexue.cli import main
from kexue.report import registry
from kexue.report.claims import Article, ClaimContext, ClaimSuite

SCHEMA_KEYS = {"id", "technique", "article", "statement", "article_value", "measured", "tolerance", "status"}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("reports")
    return main(["reproduce", "orthogonal", "--out", str(out)]), out


def test_exit_0_and_both_files(reproduced: tuple[int, Path]) -> None:
    code, out = reproduced
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json"]


def test_results_json_schema(reproduced: tuple[int, Path]) -> None:
    payload = json.loads((reproduced[1] / "results.json").read_text())
    assert payload["mode"] == "quick" and payload["kexue_version"]
    assert payload["claims"]
    for claim in payload["claims"]:
        assert SCHEMA_KEYS <= set(claim)
        assert claim["status"] in {"pass", "fail", "documented"}
        assert claim["id"].startswith(claim["technique"] + ".")
    assert "orthogonal.symmetric.orthogonality" in {c["id"] for c in payload["claims"]}
    assert payload["not_implemented"] == []  # all eight techniques have claims


def test_report_html_embeds_figures(reproduced: tuple[int, Path]) -> None:
    page = (reproduced[1] / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 2
    assert "orthogonal.near_degenerate.rotation_kexue_float32" in page.replace("<wbr>", "")


def test_json_flag_prints_the_results(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_suite(monkeypatch, passed=True)
    assert main(["reproduce", "orthogonal", "--json", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "results.json").read_text())
    assert [c["id"] for c in printed["claims"]] == ["orthogonal.fake.claim"]


def test_failed_claim_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_suite(monkeypatch, passed=False)
    assert main(["reproduce", "orthogonal", "--out", str(tmp_path)]) == 1
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["summary"] == {"pass": 0, "fail": 1, "documented": 0}
    assert "0 pass, 1 fail" in capsys.readouterr().err


def _fake_suite(monkeypatch: pytest.MonkeyPatch, *, passed: bool) -> None:
    suite = ClaimSuite("orthogonal", Article("fake", "https://kexue.fm/archives/0"))

    @suite.check
    def fake(ctx: ClaimContext) -> None:
        ctx.claim("fake.claim", "a statement", article_value=1.0, measured=1.0 if passed else 2.0, tolerance=0.0, passed=passed)

    monkeypatch.setattr(registry, "load", lambda table, technique: suite)
