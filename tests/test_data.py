"""kexue.data: where the data folder is found, and the error when it is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from kexue.data import DataNotFound, data_root, load_tinyshakespeare


def _folder(path: Path) -> Path:
    (path / "tinyshakespeare").mkdir(parents=True)
    (path / "tinyshakespeare" / "input.txt").write_text(f"from {path.name}")
    return path


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("KEXUE_DATA", raising=False)
    inner = _folder(work / "shared" / "data")  # ./shared/data
    assert data_root() == inner
    outer = _folder(tmp_path / "shared" / "data")  # ../shared/data wins over ./shared/data
    assert data_root() == outer
    env = _folder(tmp_path / "env")
    monkeypatch.setenv("KEXUE_DATA", str(env))  # KEXUE_DATA wins over both
    assert data_root() == env and load_tinyshakespeare() == "from env"
    explicit = _folder(tmp_path / "explicit")  # the argument (--data) wins over everything
    assert data_root(explicit) == explicit and load_tinyshakespeare(explicit) == "from explicit"


def test_missing_folder_names_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEXUE_DATA", raising=False)
    with pytest.raises(DataNotFound) as info:
        data_root()
    message = str(info.value)
    assert str(tmp_path.parent / "shared" / "data") in message and str(tmp_path / "shared" / "data") in message
    assert "--data DIR" in message and "KEXUE_DATA" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_file_in_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match=r"tinyshakespeare/input.txt is missing"):
        load_tinyshakespeare(tmp_path)
