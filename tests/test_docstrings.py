"""Every public name documents itself (issue #28): each name in a technique's ``__all__`` (and in the shared
public modules), and every public method of a public class, has a docstring; one that takes arguments has an
``Args:`` section (a class documents its constructor's). Every ``>>>`` example in the package runs."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import kexue

TECHNIQUES = ("orthogonal", "positional", "contrastive", "whitening", "growth", "mitchell", "repetition")


def _public(package: str) -> list[tuple[str, object]]:
    module = importlib.import_module(f"kexue.{package}")
    return [(f"kexue.{package}.{name}", getattr(module, name)) for name in getattr(module, "__all__", [])]


def _own_methods(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties a kexue class defines itself (not inherited from torch, HF, sklearn...)."""
    return [
        (name, value)
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, (property, classmethod, staticmethod)))
    ]


def _parameters(obj: object) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    target = getattr(target, "__func__", target)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters if p not in ("self", "cls")]


def _problems(name: str, obj: object) -> list[str]:
    if isinstance(obj, property):
        return [] if obj.fget and obj.fget.__doc__ else [f"{name}: no docstring"]
    obj = getattr(obj, "__func__", obj)
    if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not getattr(obj, "__module__", "").startswith("kexue"):
        return []  # constants, Literal aliases, re-exports of other libraries
    doc = inspect.getdoc(obj) if inspect.isclass(obj) else obj.__doc__
    if not doc:
        return [f"{name}: no docstring"]
    init_doc = inspect.getdoc(obj.__init__) if inspect.isclass(obj) and "__init__" in vars(obj) else ""
    if _parameters(obj) and "Args:" not in doc and "Args:" not in (init_doc or ""):
        return [f"{name}: takes {_parameters(obj)} but its docstring has no Args: section"]
    return []


@pytest.mark.parametrize("package", TECHNIQUES)
def test_public_names_are_documented(package: str) -> None:
    problems = []
    for name, obj in _public(package):
        problems += _problems(name, obj)
        if inspect.isclass(obj) and obj.__module__.startswith("kexue"):
            for method, value in _own_methods(obj):
                problems += _problems(f"{name}.{method}", value)
    assert not problems, "\n".join(problems)


def _all_modules() -> list[str]:
    skip = ("_torchrun", "__main__")  # scripts that run when imported
    found = pkgutil.walk_packages(kexue.__path__, "kexue.")
    return sorted(["kexue", *(info.name for info in found if not info.name.rsplit(".", 1)[-1].startswith(skip))])


@pytest.mark.parametrize("module_name", _all_modules())
def test_examples_run(module_name: str) -> None:
    module: ModuleType = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module_name):
        if test.examples and (test.filename or "").endswith(module.__file__ or "<none>"):
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples in {module_name} failed (see above)"
