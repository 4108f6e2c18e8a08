"""kexue._native: the kernel builder and the one backend choice that RoPE and Mitchell share.

Every way a kernel can be missing (source gone, no compiler, compile error, an entry point not
built, ``KEXUE_NATIVE=0``) must give, under ``backend="auto"``, at most one warning and the
torch path's result, which equals the kernel's bit for bit; ``backend="native"`` must raise an
error naming the cause. Each scenario uses a fresh :class:`NativeLibrary` swapped in for the
module's own, so the real (already built) kernels stay untouched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from kexue import _native as builder
from kexue import mitchell
from kexue._native import NativeFallbackWarning, NativeLibrary, NativeUnavailable, use_native
from kexue.mitchell import _native as mitchell_native
from kexue.positional import _native as rope_native
from kexue.positional import apply_rotary

SOURCES = {
    "mitchell": Path(mitchell_native.__file__).with_name("_mitchell_kernel.c"),
    "rope": Path(rope_native.__file__).with_name("_rope_kernel.c"),
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test builds into its own cache, so nothing here reuses or disturbs the real one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(cache))
    monkeypatch.delenv("KEXUE_NATIVE", raising=False)
    return cache


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 33, generator=g), torch.randn(33, 19, generator=g)
    x = torch.randn(2, 3, 5, 16, generator=g)
    angles = torch.randn(5, 8, generator=g, dtype=torch.float64).float()
    return a, b, x, angles.cos(), angles.sin()


def _kernel_results() -> dict[str, torch.Tensor]:
    """What the real kernels give (backend='native'), to compare every fallback with.

    Mitchell's kernel equals its torch path bit for bit; the rotary kernel may contract
    ``a cos − b sin`` into one FMA, so the fallback must equal ``backend="torch"`` exactly and
    the kernel to float32 rounding.
    """
    a, b, x, cos, sin = _inputs()
    kernel = apply_rotary(x, cos, sin, backend="native")
    torch_path = apply_rotary(x, cos, sin, backend="torch")
    torch.testing.assert_close(torch_path, kernel, rtol=0, atol=4e-7 * float(x.abs().max()))
    return {
        "mul": mitchell.mul(a, a + 1, backend="native"),
        "matmul": mitchell.matmul(a, b, backend="native"),
        "rope": torch_path,
    }


def _auto_results() -> dict[str, torch.Tensor]:
    a, b, x, cos, sin = _inputs()
    return {"mul": mitchell.mul(a, a + 1), "matmul": mitchell.matmul(a, b), "rope": apply_rotary(x, cos, sin)}


def _swap(monkeypatch: pytest.MonkeyPatch, make) -> dict[str, NativeLibrary]:
    """Replace both modules' libraries with ``make(name, source, symbols, flags)``."""
    swapped = {}
    for name, module in (("mitchell", mitchell_native), ("rope", rope_native)):
        real = module._LIBRARY
        swapped[name] = make(name, real.source, real.symbols, real.flags)
        monkeypatch.setattr(module, "_LIBRARY", swapped[name])
    return swapped


def _same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.dtype == y.dtype and bool((x.view(torch.int32) == y.view(torch.int32)).all())


def _check_fallback(
    monkeypatch: pytest.MonkeyPatch, make, cause: str, *, warns: bool = True, env: dict[str, str] | None = None
) -> None:
    expected = _kernel_results()
    for key, value in (env or {}).items():  # set after the real kernels ran, so they are not disabled
        monkeypatch.setenv(key, value)
    _swap(monkeypatch, make)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = _auto_results(), _auto_results()  # the second call must not warn again
    fallbacks = [w for w in caught if issubclass(w.category, NativeFallbackWarning)]
    if warns:
        # one warning per kernel entry point used: mitchell mul, mitchell matmul, rope float32
        assert len(fallbacks) == 3, [str(w.message) for w in fallbacks]
        assert all(cause in str(w.message) and "torch path" in str(w.message) for w in fallbacks)
    else:
        assert fallbacks == []
    for key in expected:
        assert _same_bits(first[key], expected[key]), key
        assert _same_bits(second[key], expected[key]), key
    a, _, x, cos, sin = _inputs()
    with pytest.raises(RuntimeError, match="backend='native' is unavailable") as info:
        mitchell.mul(a, a, backend="native")
    assert cause in str(info.value)
    with pytest.raises(RuntimeError, match=cause):
        apply_rotary(x, cos, sin, backend="native")


def test_source_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gone = tmp_path / "gone.c"
    _check_fallback(monkeypatch, lambda n, s, sym, f: NativeLibrary(n, gone, sym, f), str(gone))


def test_compiler_missing_from_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.delenv("CC", raising=False)
    _check_fallback(monkeypatch, NativeLibrary, "no C compiler found", env={"PATH": str(empty)})


def test_compile_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(name, source, symbols, flags):
        bad = tmp_path / f"{name}.c"
        bad.write_text(source.read_text() + "\nthis is not C;\n")
        return NativeLibrary(name, bad, symbols, flags)

    _check_fallback(monkeypatch, broken, "failed")


def test_entry_point_not_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A library that builds but lacks an entry point (as a float16 one without ``_Float16``)."""

    def without_symbols(name, source, symbols, flags):
        stub = tmp_path / f"{name}.c"
        stub.write_text("int kx_unrelated(void) { return 0; }\n")
        return NativeLibrary(name, stub, symbols, flags)

    _check_fallback(monkeypatch, without_symbols, "was built without")


def test_kexue_native_0_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    _check_fallback(monkeypatch, NativeLibrary, "disabled by KEXUE_NATIVE=0", warns=False, env={"KEXUE_NATIVE": "0"})


def test_float16_entry_point_missing_only_affects_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiler without ``_Float16`` (simulated by undefining ``__FLT16_MAX__``) builds no float16
    rotary entry point: float32 stays on the kernel, float16 takes the torch path with one warning."""
    real = rope_native._LIBRARY
    monkeypatch.setattr(
        rope_native, "_LIBRARY", NativeLibrary("rope", real.source, real.symbols, [*real.flags, "-U__FLT16_MAX__"])
    )
    _, _, x, cos, sin = _inputs()
    assert use_native(rope_native._LIBRARY, "auto", "kx_rope_float32")
    with pytest.warns(NativeFallbackWarning, match="kx_rope_float16"):
        half = apply_rotary(x.half(), cos, sin)
    torch.testing.assert_close(half, apply_rotary(x.half(), cos, sin, backend="torch"), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="kx_rope_float16"):
        apply_rotary(x.half(), cos, sin, backend="native")


def test_native_rejects_unsuitable_inputs_and_bad_backend() -> None:
    a = torch.randn(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"takes float32 CPU tensors only; got torch.float64"):
        mitchell.mul(a, a, backend="native")
    with pytest.raises(ValueError, match=r"backend='gpu' is not supported; accepted values: 'auto', 'torch', 'native'"):
        use_native(rope_native._LIBRARY, "gpu", "kx_rope_float32")
    assert not use_native(rope_native._LIBRARY, "torch", "kx_rope_float32")


def test_cache_folder_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert builder.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("KEXUE_CACHE_DIR")
    assert builder.cache_dir() == tmp_path / "xdg" / "kexue"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert builder.cache_dir() == tmp_path / "home" / ".cache" / "kexue"


def test_cache_key_follows_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    library = NativeLibrary("rope", SOURCES["rope"], ["kx_rope_float32"])
    monkeypatch.setattr(builder, "cpu_signature", lambda: "model name : X\nflags : fpu sse2 avx2")
    with_avx2 = library.cached_path("cc")
    monkeypatch.setattr(builder, "cpu_signature", lambda: "model name : X\nflags : fpu sse2")
    assert library.cached_path("cc") != with_avx2  # same model name, different features: another object


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo (Linux)")
def test_cpu_signature_holds_the_flags_line() -> None:
    lines = builder.cpu_signature().splitlines()
    assert any(line.startswith(("flags", "Features")) for line in lines), lines


def test_concurrent_first_builds_share_one_cache(private_cache: Path) -> None:
    """Four processes build the same kernel into one empty cache at once: all load it, one file remains."""
    code = (
        "import sys; from pathlib import Path; from kexue._native import NativeLibrary; "
        f"lib = NativeLibrary('rope', Path({str(SOURCES['rope'])!r}), ['kx_rope_float32']); "
        "lib.function('kx_rope_float32'); print(lib.compile_seconds > 0)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    built = list((private_cache / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", built  # no temporary folders left behind
    assert NativeLibrary("rope", SOURCES["rope"], ["kx_rope_float32"]).available("kx_rope_float32")


def test_unwritable_cache_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(blocker))
    library = NativeLibrary("rope", SOURCES["rope"], ["kx_rope_float32"])
    with pytest.raises(NativeUnavailable, match="KEXUE_CACHE_DIR"):
        library.function("kx_rope_float32")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_fresh_compile_seconds() -> None:
    assert NativeLibrary("rope", SOURCES["rope"], ["kx_rope_float32"]).fresh_compile_seconds() > 0


def test_an_unreadable_cache_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder this user may not enter (Path.exists raises PermissionError on Python 3.11)."""

    def denied(self):
        raise PermissionError(13, "Permission denied")

    library = NativeLibrary("rope", SOURCES["rope"], ["kx_rope_float32"])
    monkeypatch.setattr(Path, "exists", denied)
    with pytest.raises(NativeUnavailable, match="cannot be read"):
        library.function("kx_rope_float32")
    assert not library.available("kx_rope_float32")  # decided once, no exception escapes
