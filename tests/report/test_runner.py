"""The runner's time estimate: the previous run's timings, else a guess from the scale."""

from __future__ import annotations

import pytest

from kexue.report.runner import Estimate


def test_estimate_learns_from_the_previous_run(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    first = Estimate("quick", ["a.x", "a.y", "b.z"])
    assert first.source == "guessed from the quick scale" and first.remaining() == 3 * Estimate.GUESS["quick"]
    first.done("a.x", 10.0)  # 10 s where 3 s were guessed: the rest is scaled by 10/3
    assert first.remaining() == pytest.approx(2 * 3.0 * 10 / 3)
    first.done("a.y", 2.0)
    first.done("b.z", 4.0)
    assert first.describe() == ""
    first.save()
    second = Estimate("quick", ["a.x", "a.y", "b.z"])
    assert second.source == "from the last run" and second.remaining() == pytest.approx(16.0)
    assert "about 16 s left (from the last run)" == second.describe()
    assert Estimate("full", ["a.x"]).source == "guessed from the full scale"  # timings are per scale
    assert Estimate("quick", ["a.x", "new.check"]).source == "partly from the last run"


def test_unwritable_cache_is_ignored(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(blocker))
    estimate = Estimate("quick", ["a.x"])
    estimate.done("a.x", 1.0)
    estimate.save()  # no error


@pytest.mark.parametrize(
    "content", ["null", "[]", '{"quick": 5}', '{"quick": {"a.x": "slow", "a.y": true}}', "{not json"]
)
def test_malformed_timings_count_as_none(tmp_path, monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    (tmp_path / "reproduce-timings.json").write_text(content)
    estimate = Estimate("quick", ["a.x", "a.y"])
    assert estimate.source == "guessed from the quick scale"
    estimate.done("a.x", 1.0)
    estimate.done("a.y", 2.0)
    estimate.save()
    assert Estimate("quick", ["a.x", "a.y"]).remaining() == pytest.approx(3.0)


def test_a_suite_whose_import_misses_an_extra_module_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from kexue.report import registry
    from kexue.report.runner import run_claims

    def load(table, technique):
        raise ModuleNotFoundError("No module named 'tokenizers'", name="tokenizers")

    monkeypatch.setattr(registry, "load", load)
    result = run_claims(["growth"])
    assert [(c.id, c.status) for c in result.claims] == [("growth.claims.skipped", "skipped")]
    assert "pip install 'kexue[nlp]'" in result.claims[0].details
