"""Which techniques exist, and where their claims and benchmarks live.

The eight technique names are fixed (they are the project's vocabulary everywhere: CLI,
``results.json`` ids, ``bench.json``). A technique is *implemented* once it has an entry
in :data:`SUITES`; adding one is a single line here and touches no other technique.
Entries are import strings (``module:attribute``) so that ``kexue --help`` and runs of
one technique do not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BENCHMARKS", "SUITES", "TECHNIQUES", "implemented", "load", "parse_techniques"]

TECHNIQUES: tuple[str, ...] = (
    "orthogonal",
    "sinusoidal",
    "rope",
    "contrastive",
    "whitening",
    "growth",
    "mitchell",
    "repetition",
)

# technique -> "module:attribute" of its ClaimSuite
SUITES: dict[str, str] = {
    "orthogonal": "kexue.orthogonal.claims:SUITE",
    "sinusoidal": "kexue.positional.claims:SINUSOIDAL",
    "rope": "kexue.positional.claims:ROPE",
    "contrastive": "kexue.contrastive.claims:SUITE",
    "whitening": "kexue.whitening.claims:SUITE",
    "growth": "kexue.growth.claims:SUITE",
    "mitchell": "kexue.mitchell.claims:SUITE",
    "repetition": "kexue.repetition.claims:SUITE",
}

# technique -> "module:attribute" of its BenchSuite
BENCHMARKS: dict[str, str] = {
    "orthogonal": "kexue.orthogonal.benchmark:BENCH",
    "rope": "kexue.positional.benchmark:BENCH",
    "contrastive": "kexue.contrastive.benchmark:BENCH",
    "whitening": "kexue.whitening.benchmark:BENCH",
    "growth": "kexue.growth.benchmark:BENCH",
    "mitchell": "kexue.mitchell.benchmark:BENCH",
    "repetition": "kexue.repetition.benchmark:BENCH",
}


def implemented(table: dict[str, str]) -> list[str]:
    """Technique names with an entry in ``table``, in the canonical order."""
    return [t for t in TECHNIQUES if t in table]


def load(table: dict[str, str], technique: str) -> Any:
    """Import and return the object registered for ``technique``."""
    module, _, attribute = table[technique].partition(":")
    return getattr(importlib.import_module(module), attribute)


def parse_techniques(names: list[str], table: dict[str, str], what: str) -> list[str]:
    """Validate technique names for a command; empty means every implemented one.

    Raises:
        ValueError: an unknown name, or a known technique that has no ``what`` yet.
    """
    if not names:
        return implemented(table)
    chosen: list[str] = []
    for name in names:
        if name not in TECHNIQUES:
            raise ValueError(f"unknown technique {name!r}; choose from: {', '.join(TECHNIQUES)}")
        if name not in table:
            raise ValueError(
                f"technique {name!r} has no {what} yet in this version; available: {', '.join(implemented(table))}"
            )
        if name not in chosen:
            chosen.append(name)
    return chosen
