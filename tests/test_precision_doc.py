"""docs/precision.md is the matrix's own table: every entry point is a row, with a measured error under its bound,
and `make gpu-check` stands ready (and says so, exit 0) on a machine without CUDA."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from device_contract import LOW_DTYPES, load_entries

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "precision.md"


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([^`]+)` \|", line)
        if match:
            rows[match.group(1)] = [c.strip() for c in line.strip().strip("|").split(" | ")]
    return rows


def test_every_entry_point_has_a_row() -> None:
    rows = _rows()
    missing = [e.name for e in load_entries() if e.name not in rows]
    assert not missing, f"docs/precision.md lacks rows for {missing}: run `make precision`"
    assert len(rows) == len(load_entries())


def test_measured_errors_are_under_their_bounds() -> None:
    for name, cells in _rows().items():
        for cell in cells[-(len(LOW_DTYPES) + 1) :]:
            if cell in ("refused", "n/a"):
                continue
            measured, bound = (float(x) for x in cell.split(" / "))
            assert measured <= bound, f"{name}: {cell}"


def test_gpu_check_exits_cleanly_without_cuda() -> None:
    assert not torch.cuda.is_available()
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "gpu-check")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
