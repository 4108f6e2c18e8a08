from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kexue.report.io import atomic_write, machine_info, prepare_out_dir, write_json


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write(target, "old")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["r.json"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json(target, {"ok": 1})
    with pytest.raises(ValueError):  # NaN is not strict JSON: refused before anything is written
        write_json(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"ok": 1}

    class Exploding:
        def __str__(self) -> str:
            raise RuntimeError("mid-write")

    with pytest.raises(TypeError):
        atomic_write(target, Exploding())  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_prepare_out_dir_creates_nested_directories(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "a" / "b")
    assert out.is_dir() and os.listdir(out) == []


def test_prepare_out_dir_rejects_a_path_below_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"--out .*file/sub.* is not a writable directory"):
        prepare_out_dir(blocker / "sub")


def test_machine_info_names_what_timings_depend_on() -> None:
    info = machine_info()
    for key in ("kexue_version", "torch", "torch_threads", "cpu_count", "processor", "transparent_hugepages"):
        assert key in info
    json.dumps(info)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path, umask: int) -> None:
    """Temporary files are private (0600); the published file must have 0666 & ~umask, like open()."""
    import numpy as np

    from kexue.whitening import Whitening

    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic_write(tmp_path / "atomic.txt", "x")
        Whitening().fit(np.random.default_rng(0).standard_normal((20, 3))).save(tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    want = plain.stat().st_mode & 0o777
    assert want == 0o666 & ~umask
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == want
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == want
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "atomic.txt",
        "plain.txt",
        "w.safetensors",
    ]  # no temporaries left
