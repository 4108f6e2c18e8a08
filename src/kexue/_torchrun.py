"""Run a module under ``torchrun`` on localhost (gloo) and read back rank 0's JSON result.

Used by the multi-process checks of the claims and tests. Each check module takes the output
path as its first argument, writes JSON there from rank 0 (atomically), and ends with
:func:`exit_without_finalising` (see there why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kexue.report.io import write_json

__all__ = ["exit_without_finalising", "launch_module", "write_result"]


def launch_module(module: str, args: list[str], nproc: int = 2, timeout: float = 300) -> dict[str, Any]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE OUT ARGS``.

    Args:
        module: the check module to run on every rank.
        args: its arguments after the output path.
        nproc: the number of processes.
        timeout: seconds before the run is abandoned.

    Returns:
        The JSON object rank 0 wrote.

    Raises:
        RuntimeError: the run failed or wrote nothing, with the end of its stderr.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            module,
            str(out),
            *args,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"torchrun {module} failed (exit {done.returncode}): {done.stderr[-2000:]}")
        return json.loads(out.read_text())


def write_result(path: str, payload: dict[str, Any]) -> None:
    """Write rank 0's result atomically (see :func:`kexue.report.io.write_json`).

    Args:
        path: the output path the launcher gave.
        payload: the JSON-able result.
    """
    write_json(path, payload)


def exit_without_finalising(code: int) -> None:
    """Flush and ``os._exit``: torch 2.13's gloo worker threads can abort the process
    ("terminate called without an active exception") when destroyed during interpreter
    finalisation, after the results are written (about 1 run in 10 on a 2-core machine).

    Args:
        code: the exit status.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
