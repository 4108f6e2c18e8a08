"""The README's Python blocks run as written, each on its own, in a fresh interpreter and an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
SLOW = ("SentenceTransformer(",)  # blocks that load the embedded encoder and encode text: several seconds


def _params():
    for i, code in enumerate(BLOCKS):
        first = next(
            line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from", "#"))
        )
        marks = [pytest.mark.slow] if any(s in code for s in SLOW) else []
        yield pytest.param(code, id=f"block{i}-{re.sub(r'[^A-Za-z0-9]+', '_', first)[:40]}", marks=marks)


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 9


@pytest.mark.parametrize("code", list(_params()))
def test_readme_block_runs(code: str, tmp_path: Path) -> None:
    data = README.parents[1] / "shared" / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "KEXUE_DATA": str(data)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
