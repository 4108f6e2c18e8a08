"""Fuzz both C kernels through the public API: random shapes, strides, broadcasts and special values.

Each case runs ``backend="native"`` and ``backend="torch"`` on the same inputs and requires the
same answer (Mitchell bit for bit, RoPE to float32 rounding), with inputs the kernels must read
through strides: transposed and sliced (non-contiguous) views, expanded (zero-stride) tables and
operands, zero-size dimensions. A kernel that reads or writes out of bounds either crashes here
or, more reliably, under AddressSanitizer: ``test_fuzz_under_address_sanitizer`` (``slow``) reruns
this file in a child process whose kernels are built with ``-fsanitize=address`` (``KEXUE_TEST_ASAN=1``
makes the fixture below swap them in) and libasan preloaded; any bad access aborts that child.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexue import mitchell
from kexue._native import NativeLibrary
from kexue.mitchell import _native as mitchell_native
from kexue.positional import _native as rope_native
from kexue.positional import apply_rotary

ASAN = os.environ.get("KEXUE_TEST_ASAN") == "1"
EXAMPLES = 60 if ASAN else 40
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-40, 3.4e38, 1.0, -2.0]

pytestmark = pytest.mark.skipif(
    not (mitchell_native.available() and rope_native.available()), reason="the C kernels are not built on this machine"
)


@pytest.fixture(scope="module", autouse=True)
def sanitized_kernels():
    """Under KEXUE_TEST_ASAN=1, both modules' kernels are rebuilt with AddressSanitizer."""
    if not ASAN:
        yield
        return
    saved = mitchell_native._LIBRARY, rope_native._LIBRARY
    flags = [
        "-O1",
        "-g",
        "-fsanitize=address",
        "-fno-omit-frame-pointer",
        "-fopenmp",
        "-shared",
        "-fPIC",
        "-fno-math-errno",
    ]
    for module in (mitchell_native, rope_native):
        real = module._LIBRARY
        extra = ["-ffp-contract=off"] if module is mitchell_native else []
        module._LIBRARY = NativeLibrary(real.name + "-asan", real.source, real.symbols, flags + extra)
        module._LIBRARY.load()
    yield
    mitchell_native._LIBRARY, rope_native._LIBRARY = saved


def _view(draw, shape: tuple[int, ...], dtype: torch.dtype, special: bool) -> torch.Tensor:
    """A tensor of ``shape`` that is, at random, contiguous, a transposed copy's view, a strided
    slice of a bigger tensor, or an expanded (zero-stride) broadcast."""
    kind = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def values(s: tuple[int, ...]) -> torch.Tensor:
        t = torch.randn(s, generator=g, dtype=torch.float64) * 4
        if special and t.numel():
            flat = t.view(-1)
            picks = torch.randint(0, flat.numel(), (max(1, flat.numel() // 5),), generator=g)
            flat[picks] = torch.tensor([SPECIALS[i % len(SPECIALS)] for i in range(len(picks))], dtype=torch.float64)
        return t.to(dtype)

    if kind == "transposed" and len(shape) >= 2:
        return values(shape[::-1]).permute(*reversed(range(len(shape))))
    if kind == "sliced":
        big = values(tuple(2 * n + 1 for n in shape))
        return big[tuple(slice(1, 1 + 2 * n, 2) for n in shape)]
    if kind == "expanded" and shape and shape[0] > 0:
        return values((1, *shape[1:])).expand(shape)
    return values(shape)


def _same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    view = {
        torch.float32: torch.int32,
        torch.float64: torch.int64,
        torch.float16: torch.int16,
        torch.bfloat16: torch.int16,
    }[x.dtype]
    nan = torch.isnan(x) & torch.isnan(y)
    return x.shape == y.shape and bool(((x.contiguous().view(view) == y.contiguous().view(view)) | nan).all())


@FUZZ
@given(st.data())
def test_rope_kernel_matches_torch_on_any_layout(data) -> None:
    lead = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=4), label="leading dims")
    half = data.draw(st.integers(1, 12), label="rotated pairs")
    d = 2 * half + data.draw(st.integers(0, 5), label="pass-through tail")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    x = _view(data.draw, (*lead, d), dtype, special=False)
    # the tables broadcast over the leading dimensions: (T, R/2) or the full shape, possibly expanded
    table_shape = (*lead[-1:], half) if data.draw(st.booleans()) else (*lead, half)
    angles = _view(data.draw, table_shape, torch.float64, special=False)
    cos, sin = angles.cos().float(), angles.sin().float()
    if data.draw(st.booleans()):
        cos, sin = cos.expand(*lead, half), sin.expand(*lead, half)
    layout = data.draw(st.sampled_from(["half", "interleaved"]))
    inverse = data.draw(st.booleans())
    native = apply_rotary(x, cos, sin, layout=layout, inverse=inverse, backend="native")
    plain = apply_rotary(x, cos, sin, layout=layout, inverse=inverse, backend="torch")
    assert native.shape == x.shape and native.dtype == x.dtype
    scale = float(x.abs().max()) if x.numel() else 0.0
    tol = {torch.float32: 1e-6, torch.float64: 1e-14, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype] * max(
        scale, 1.0
    )
    torch.testing.assert_close(native.double(), plain.double(), rtol=0, atol=tol)
    if x.is_contiguous() and x.numel():  # in place on a contiguous tensor rotates the same way
        inplace = x.clone()
        apply_rotary(inplace, cos, sin, layout=layout, inverse=inverse, out=inplace, backend="native")
        torch.testing.assert_close(inplace.double(), native.double(), rtol=0, atol=tol)


@FUZZ
@given(st.data())
def test_mitchell_mul_kernel_matches_torch_with_broadcasts_and_specials(data) -> None:
    shape = tuple(data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=3), label="shape"))
    a = _view(data.draw, shape, torch.float32, special=True)
    # b broadcasts against a: some dimensions of size 1
    b_shape = tuple(n if data.draw(st.booleans()) else 1 for n in shape)
    b = _view(data.draw, b_shape, torch.float32, special=True)
    correction = data.draw(st.sampled_from([None, "constant", "piecewise"]))
    native = mitchell.mul(a, b, correction=correction, backend="native")
    plain = mitchell.mul(a, b, correction=correction, backend="torch")
    assert _same_bits(native, plain)


@FUZZ
@given(st.data())
def test_mitchell_matmul_kernel_matches_torch_on_any_layout(data) -> None:
    m, k, n = (data.draw(st.integers(0, 40), label=name) for name in "mkn")
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2), label="batch dims"))
    a = _view(data.draw, (*lead, m, k), torch.float32, special=False)
    b = _view(data.draw, (k, n), torch.float32, special=False)
    correction = data.draw(st.sampled_from([None, "constant", "piecewise"]))
    native = mitchell.matmul(a, b, correction=correction, backend="native")
    plain = mitchell.matmul(a, b, correction=correction, backend="torch")
    assert _same_bits(native, plain)


@pytest.mark.slow
@pytest.mark.skipif(ASAN or shutil.which("cc") is None, reason="needs a C compiler (and is the outer run)")
def test_fuzz_under_address_sanitizer(tmp_path: Path) -> None:
    """This file's fuzz tests again, with the kernels built by -fsanitize=address and libasan preloaded."""
    libasan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not Path(libasan).exists():
        pytest.skip("the C compiler has no AddressSanitizer runtime")
    env = {
        **os.environ,
        "KEXUE_TEST_ASAN": "1",
        "LD_PRELOAD": libasan,
        "KEXUE_CACHE_DIR": str(tmp_path / "cache"),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:])
    assert "3 passed" in done.stdout, done.stdout[-2000:]
    built = {"-".join(p.name.split("-")[:2]) for p in (tmp_path / "cache" / "native").glob("*.so")}
    assert {"mitchell-asan", "rope-asan"} <= built, built  # the fuzz ran on the sanitized kernels
