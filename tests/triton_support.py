"""What the Triton kernel tests of both techniques share: the kernel module built for the interpreter, and the
ahead-of-time compile report (registers, spills, stack) for sm_80 and sm_90."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

_AOT = """
import json, sys
from importlib import import_module
from kexue._triton import compile_resources
report = {}
for name, fn, pointers, constexprs, warps in import_module(sys.argv[1]).compile_cases():
    for arch in (80, 90):
        r = compile_resources(fn, pointers, constexprs, arch=arch, num_warps=warps)
        report[f"{name}@sm_{arch}"] = [r.registers, r.spills, r.stack_bytes]
print(json.dumps(report))
"""


@contextmanager
def interpreted(module_name: str, kernel: str) -> Iterator[ModuleType]:
    """``module_name`` imported for the Triton interpreter: ``triton.jit`` reads ``TRITON_INTERPRET`` when the
    module is imported, so it is set first (and the module reloaded if something imported it before);
    ``kernel`` names one of its jit functions, to check the result."""
    from triton.runtime.interpreter import InterpretedFunction

    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module(module_name)
        if not isinstance(getattr(module, kernel), InterpretedFunction):
            module = importlib.reload(module)
        assert isinstance(getattr(module, kernel), InterpretedFunction)
        yield module
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before


def compiled(module_name: str, kernel: str) -> ModuleType:
    """``module_name`` with real (compiled) jit functions: reloaded if the interpreter built it before."""
    from triton.runtime.interpreter import InterpretedFunction

    module = importlib.import_module(module_name)
    return importlib.reload(module) if isinstance(getattr(module, kernel), InterpretedFunction) else module


def compile_report(module_name: str, cache: Path) -> dict[str, list[int]]:
    """``{case@sm_arch: [registers, spill bytes, stack bytes]}`` for every ``compile_cases()`` entry of
    ``module_name``, built for sm_80 and sm_90 in a fresh process (real jit functions, not the interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(cache), TRITON_DEFAULT_FP_FUSION="0")
    done = subprocess.run(
        [sys.executable, "-c", _AOT, module_name], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_no_spills(report: dict[str, list[int]]) -> None:
    """Every case compiled within the register file, with nothing spilled to local memory."""
    for case, (registers, spills, stack) in report.items():
        assert 0 < registers <= 255, case
        assert spills == 0 and stack == 0, f"{case}: {spills} bytes spilled, {stack} bytes of stack"
