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
        assert claim["status"] in {"pass", "fail", "documented", "skipped"}
        assert claim["id"].startswith(claim["technique"] + ".")
    assert "orthogonal.symmetric.orthogonality" in {c["id"] for c in payload["claims"]}
    assert payload["not_implemented"] == []  # all eight techniques have claims


def test_report_html_embeds_figures(reproduced: tuple[int, Path]) -> None:
    page = (reproduced[1] / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 2
    assert "orthogonal.near_degenerate.rotation_kexue_float32" in page.replace("<wbr>", "")


def test_json_flag_prints_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_suite(monkeypatch, passed=True)
    assert main(["reproduce", "orthogonal", "--json", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "results.json").read_text())
    assert [c["id"] for c in printed["claims"]] == ["orthogonal.fake.claim"]


def test_failed_claim_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_suite(monkeypatch, passed=False)
    assert main(["reproduce", "orthogonal", "--out", str(tmp_path)]) == 1
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["summary"] == {"pass": 0, "fail": 1, "documented": 0, "skipped": 0}
    assert "0 pass, 1 fail" in capsys.readouterr().err


def _fake_suite(monkeypatch: pytest.MonkeyPatch, *, passed: bool) -> None:
    suite = ClaimSuite("orthogonal", Article("fake", "https://kexue.fm/archives/0"))

    @suite.check
    def fake(ctx: ClaimContext) -> None:
        ctx.claim(
            "fake.claim",
            "a statement",
            article_value=1.0,
            measured=1.0 if passed else 2.0,
            tolerance=0.0,
            passed=passed,
        )

    monkeypatch.setattr(registry, "load", lambda table, technique: suite)


def _data_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite whose one check reads tinyshakespeare from the data folder, one that needs a missing
    extra, and one that passes: only the first depends on where the data is."""
    suite = ClaimSuite("repetition", Article("fake", "https://kexue.fm/archives/0"))

    @suite.check
    def reads_data(ctx: ClaimContext) -> None:
        from kexue.data import load_tinyshakespeare

        text = load_tinyshakespeare()
        ctx.claim("data.read", "the corpus is read", article_value="hello", measured=text, passed=text == "hello")

    @suite.check
    def needs_an_extra(ctx: ClaimContext) -> None:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    @suite.check
    def plain(ctx: ClaimContext) -> None:
        ctx.claim("plain", "always true", article_value=1, measured=1, passed=True)

    monkeypatch.setattr(registry, "load", lambda table, technique: suite)


def test_missing_data_and_extras_are_skipped_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _data_suite(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEXUE_DATA", raising=False)
    assert main(["reproduce", "repetition", "--out", str(tmp_path / "out")]) == 0
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["summary"] == {"pass": 1, "fail": 0, "documented": 0, "skipped": 2}
    skipped = {c["id"]: c for c in payload["claims"] if c["status"] == "skipped"}
    assert set(skipped) == {"repetition.reads_data.skipped", "repetition.needs_an_extra.skipped"}
    assert "KEXUE_DATA" in skipped["repetition.reads_data.skipped"]["details"]
    assert "pip install 'kexue[report]'" in skipped["repetition.needs_an_extra.skipped"]["details"]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kexue reproduce:")]
    assert len(lines) == 1 and "2 check(s) skipped" in lines[0] and "kexue[report]" in lines[0], err
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("badge skipped") == 3 and "2 skipped" in page  # two claims and the dashboard's count


def test_data_option_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _data_suite(monkeypatch)
    data = tmp_path / "somewhere"
    (data / "tinyshakespeare").mkdir(parents=True)
    (data / "tinyshakespeare" / "input.txt").write_text("hello")
    monkeypatch.setenv("KEXUE_DATA", str(tmp_path / "not-this-one"))  # --data wins over the variable
    assert main(["reproduce", "repetition", "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["summary"] == {"pass": 2, "fail": 0, "documented": 0, "skipped": 1}


@pytest.mark.parametrize("command", ["reproduce", "bench"])
def test_data_option_must_be_a_folder(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "orthogonal", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--data {tmp_path / 'nowhere'}: no such folder" in err[0]


def test_suite_that_needs_a_missing_extra_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kexue._optional import MissingExtra

    def load(table, technique):
        raise MissingExtra("kexue.growth", "transformers")

    monkeypatch.setattr(registry, "load", load)
    assert main(["reproduce", "growth", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [(c["id"], c["status"]) for c in payload["claims"]] == [("growth.claims.skipped", "skipped")]
    assert "kexue[nlp]" in payload["claims"][0]["details"]


def test_bench_option_links_bench_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_suite(monkeypatch, passed=True)
    bench = tmp_path / "runs #2"
    bench.mkdir()
    (bench / "bench.html").write_text("<html></html>")
    assert main(["reproduce", "orthogonal", "--bench", str(bench), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "href='../runs%20%232/bench.html'" in page  # relative to the report, URL-quoted
    assert (
        main(["reproduce", "orthogonal", "--bench", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    )  # no bench.html there


def test_no_cache_is_set_for_the_run_only(tmp_path, monkeypatch) -> None:
    import os

    from kexue.report import runner

    seen = []
    real = runner.run_claims

    def spy(*args, **kwargs):
        seen.append(os.environ.get("KEXUE_NO_CACHE"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_claims", spy)
    monkeypatch.delenv("KEXUE_NO_CACHE", raising=False)
    assert main(["reproduce", "orthogonal", "--no-cache", "--out", str(tmp_path / "a")]) == 0
    assert main(["reproduce", "orthogonal", "--out", str(tmp_path / "b")]) == 0
    assert seen == ["1", None] and "KEXUE_NO_CACHE" not in os.environ
