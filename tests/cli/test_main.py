"""The ``kexue`` command: help, version, exit codes and one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kexue import __version__
from kexue.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kexue {__version__}"


@pytest.mark.parametrize("command", ["reproduce", "bench"])
def test_subcommand_help_has_a_copy_pasteable_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"kexue {command} orthogonal" in out


def test_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "reproduce" in out and "bench" in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: kexue" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["reproduce", "householder"],
            "kexue reproduce: error: unknown technique 'householder'; choose from: orthogonal",
        ),
        (["bench", "householder"], "kexue bench: error: unknown technique 'householder'"),
        (["reproduce", "--bogus"], "kexue reproduce: error: unrecognized arguments: --bogus"),
        (["frobnicate"], "kexue frobnicate: error: argument COMMAND: invalid choice: 'frobnicate'"),
        (["bench", "--repeats", "0"], "kexue bench: error: --repeats 0 must be at least 1"),
        (["bench", "--device", "tpu"], "kexue bench: error: --device 'tpu'"),
        (["reproduce", "--seed", "x"], "kexue reproduce: error: argument --seed: invalid int value: 'x'"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in captured.err


def test_unwritable_out_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for command in ("reproduce", "bench"):
        assert main([command, "orthogonal", "--out", str(blocker / "sub")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not a writable directory" in err[0] and str(blocker) in err[0]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown technique"):
        main(["reproduce", "householder", "--debug"])


def test_installed_entry_point_runs() -> None:
    """The console script in the environment (what the README tells people to type)."""
    script = shutil.which("kexue", path=str(Path(sys.executable).parent))
    assert script is not None, "the kexue console script is not installed next to this Python"
    done = subprocess.run([script, "reproduce", "nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "kexue reproduce: error: unknown technique 'nope'; choose from: orthogonal, sinusoidal, rope, "
        "contrastive, whitening, growth, mitchell, repetition"
    )
    module = subprocess.run([sys.executable, "-m", "kexue", "--version"], capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and module.stdout.strip() == f"kexue {__version__}"
