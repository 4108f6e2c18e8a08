"""Choosing and feeding the Triton GPU kernels (``kexue[gpu]``), shared by the techniques that have one.

Triton is optional: nothing here imports it at module import, so ``import kexue`` stays light and
works where triton is absent. The kernels themselves live next to their torch paths
(:mod:`kexue.positional._triton`, :mod:`kexue.mitchell._triton`) and import triton when loaded.

Selection (the rule the public functions follow): ``backend="auto"`` runs a Triton kernel when every
tensor is on a CUDA device, the dtype is one the kernel takes, and triton imports; anything else runs
the torch (or the CPU native) path. No value is read on the host to decide.

The kernels are checked without a GPU: ``TRITON_INTERPRET=1`` runs them on CPU tensors (read by
``triton.jit`` when a kernel module is imported), and ``triton.compile`` builds them for sm_80 and
sm_90 with the bundled ``ptxas``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kexue._native import NativeFallbackWarning

__all__ = [
    "Resources",
    "available",
    "collapse",
    "compile_resources",
    "failed",
    "interpreting",
    "on_cuda",
    "signature_of",
    "usable",
]

# kernel family ("rope", "mitchell") -> why it failed in this process; a failed family is never chosen again
_FAILURES: dict[str, str] = {}


def usable(kernel: str, backend: str, *tensors: torch.Tensor) -> bool:
    """Whether a call takes the Triton kernel family ``kernel``: the one selection rule of the package.

    True when ``backend`` is not ``"torch"``, every tensor is on CUDA, triton imports, and the family has
    not failed in this process. Decided from devices alone: no value is read on the host.

    Args:
        kernel: the kernel family (``"rope"``, ``"mitchell"``).
        backend: the call's ``backend`` option.
        *tensors: every tensor of the call.

    Returns:
        Whether to launch the Triton kernel.
    """
    return backend != "torch" and bool(tensors) and kernel not in _FAILURES and on_cuda(*tensors) and available()


def failed(kernel: str, exc: BaseException) -> None:
    """Record that ``kernel`` failed to compile or launch and warn once; later calls take the torch path.

    A kernel is an optimisation, never a requirement: as with the C kernels, a failure falls back to the
    torch path with one :class:`kexue._native.NativeFallbackWarning`.

    Args:
        kernel: the kernel family.
        exc: what it raised.
    """
    _FAILURES[kernel] = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"the Triton {kernel} kernel failed ({_FAILURES[kernel][:300]}); using the torch path from now on",
        NativeFallbackWarning,
        stacklevel=3,
    )


@functools.cache
def available() -> bool:
    """Whether triton is installed and imports (checked once per process).

    Returns:
        Whether the Triton kernels can be used.
    """
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        # optional extra: gpu (triton), imported only to see that it loads
        import triton  # noqa: F401
    except Exception:  # a broken install (e.g. a missing shared library) must not break kexue
        return False
    return True


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for the interpreter (then the kernels take CPU tensors).

    Returns:
        Whether the environment variable is set to a true value.
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def on_cuda(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is on a CUDA device (the only place the compiled kernels run).

    Args:
        *tensors: the call's tensors.

    Returns:
        Whether all of them are on CUDA.
    """
    return all(t.device.type == "cuda" for t in tensors)


def collapse(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge dimensions that every tensor walks as one, and drop dimensions of size 1.

    Dimension ``i`` merges into ``i + 1`` when ``stride[i] == stride[i + 1] * shape[i + 1]`` for every
    tensor, so a contiguous tensor becomes one dimension and ``(B, H, T)`` of a ``(B, T, H, D)``
    tensor's transposed view stays three.

    Args:
        shape: the common (broadcast) shape.
        strides: one stride sequence per tensor, each of ``len(shape)`` (0 for broadcast dimensions).

    Returns:
        ``(shape, strides)`` with at least one dimension (``[1]`` and zero strides for a scalar shape).
    """
    dims = [(size, [s[i] for s in strides]) for i, size in enumerate(shape) if size != 1]
    merged: list[tuple[int, list[int]]] = []
    for size, st in dims:
        if merged:
            prev_size, prev_st = merged[-1]
            if all(p == c * size for p, c in zip(prev_st, st, strict=True)):
                merged[-1] = (prev_size * size, st)
                continue
        merged.append((size, st))
    if not merged:
        return [1], [[0] for _ in strides]
    return [size for size, _ in merged], [[st[t] for _, st in merged] for t in range(len(strides))]


@dataclass(frozen=True)
class Resources:
    """What ``ptxas -v`` reports for one compiled kernel."""

    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int

    @property
    def spills(self) -> int:
        """Bytes spilled to local memory (stores plus loads): 0 for a kernel that fits its registers."""
        return self.spill_stores + self.spill_loads


def signature_of(
    fn: Any, pointers: Mapping[str, str], constexprs: Mapping[str, Any], integers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``triton.compile``'s signature of a ``@triton.jit`` function.

    Args:
        fn: the ``@triton.jit`` function (a ``JITFunction``; triton ships no type information).
        pointers: pointer argument name → element type (``"*fp32"``, …).
        constexprs: the ``tl.constexpr`` arguments (their names are what counts here).
        integers: integer arguments that are not ``i32`` (name → ``"i64"``).

    Returns:
        Argument name → type string, in the function's argument order.
    """
    integers = integers or {}
    return {
        name: "constexpr" if name in constexprs else pointers.get(name, integers.get(name, "i32"))
        for name in fn.arg_names
    }


def _ptxas_report(log: str) -> Resources:
    registers = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or frame is None:
        raise RuntimeError(f"could not read ptxas's resource usage from:\n{log}")
    stack, stores, loads = (int(v) for v in frame.groups())
    return Resources(registers=int(registers.group(1)), stack_bytes=stack, spill_stores=stores, spill_loads=loads)


def compile_resources(
    fn: Any,
    pointers: Mapping[str, str],
    constexprs: Mapping[str, Any],
    *,
    arch: int,
    num_warps: int = 4,
    integers: Mapping[str, str] | None = None,
) -> Resources:
    """Compile a kernel ahead of time for ``sm_<arch>`` without a GPU and return its resource usage.

    ``triton.compile`` builds the PTX and the cubin with the bundled ``ptxas`` (raising on any compile
    error); the PTX is then assembled once more with ``ptxas -v`` and Triton's flags, as Triton does not
    keep the report. Pointer arguments are declared 16-byte aligned, as the launcher finds torch's allocations.

    Args:
        fn: a ``@triton.jit`` function (a ``JITFunction``: import its module without ``TRITON_INTERPRET``).
        pointers: pointer argument name → element type (``"*fp32"``, ``"*bf16"``, …).
        constexprs: the ``tl.constexpr`` arguments' values.
        arch: compute capability as an integer (80, 90).
        num_warps: warps per program.
        integers: integer arguments that are not ``i32`` (name → ``"i64"``).

    Returns:
        The registers, stack and spills ``ptxas`` reports.
    """
    # optional extra: gpu (triton)
    import triton
    from triton.backends.compiler import GPUTarget  # optional extra: gpu
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability  # optional extra: gpu
    from triton.compiler import ASTSource  # optional extra: gpu

    signature = signature_of(fn, pointers, constexprs, integers)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name in pointers}
    source = ASTSource(fn, signature, dict(constexprs), attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "enable_fp_fusion": False}
    )
    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        done = subprocess.run(
            [
                get_ptxas(arch).path,
                "-v",
                "--fmad=false",
                "--regAllocOptLevel=2",  # Triton's own flags
                f"--gpu-name={sm_arch_from_capability(arch)}",
                str(ptx),
                "-o",
                str(ptx.with_suffix(".cubin")),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    return _ptxas_report(done.stderr)
