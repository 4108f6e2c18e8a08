"""Hostile input for the public array-taking API of every technique.

One table (ENTRIES) says, for each public function or class, how to call it with valid
arguments and which array argument to make hostile. Every entry is fed every variant of
VARIANTS, with shapes and values drawn by hypothesis:

* equivalent inputs (a strided view, an expanded zero-stride view, a float32 copy for float64,
  integers where reals are expected, huge and subnormal magnitudes): a result that equals the
  result on a plain contiguous copy (to the dtype's precision) and holds no NaN or inf that the
  input did not (or a ValueError/TypeError);
* invalid inputs (NaN, inf, complex, bool, object arrays, zero-size, 0-d and 1-d where more is
  needed, a mismatched shape): a ValueError or TypeError whose message names the argument, or,
  for an entry whose policy is IEEE arithmetic (Mitchell's element-wise operations), NaN/inf
  propagated exactly where the input had them.

Never a silent NaN, never a wrong answer, never a crash of the process.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexue import mitchell
from kexue.contrastive import InfoNCE, info_nce, info_nce_tiled
from kexue.mitchell import MitchellConv2d, MitchellLinear
from kexue.orthogonal import apply_orthogonal_map, low_rank_factors, orthogonal_map
from kexue.positional import (
    RotaryEmbedding,
    apply_rotary,
    convert_layout,
    integral_approximation,
    relative_inner_products,
    sinusoidal_table,
    sinusoidal_table_nd,
)
from kexue.repetition import (
    apply_decoding,
    bounds,
    estimate_r,
    exact_r,
    find_loops,
    seq_rep_n,
    summary,
    transition_matrix,
)
from kexue.whitening import Whitening

HOSTILE = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _unit_rows(g: torch.Generator, n: int, d: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def _transition(g: torch.Generator, n: int) -> np.ndarray:
    p = torch.rand(n, n, generator=g, dtype=torch.float64) + 0.05
    return (p / p.sum(1, keepdim=True)).numpy()


@dataclass(frozen=True)
class Entry:
    """How to call one public callable: ``build(g, size) -> kwargs`` of valid arguments, ``call(**kwargs)``."""

    name: str
    arg: str  # the argument made hostile
    build: Callable[[torch.Generator, int], dict[str, Any]]
    call: Callable[..., Any]
    # IEEE semantics: NaN/inf propagate by design, exactly where this exact (non-kexue) computation
    # has them; e.g. Mitchell's products emulate float arithmetic, RoPE is a rotation like torch's own
    exact: Callable[..., Any] | None = None
    valid: frozenset[str] = frozenset()  # hostile-looking variants this entry accepts by design (any shape, any token)
    skip: frozenset[str] = frozenset()  # variants that do not apply to this argument's type


def _rope_tables(g: torch.Generator, n: int) -> dict[str, Any]:
    """x (2, n, 8) with (n, 4) tables: a hostile x or cos, as the argument says."""
    angles = torch.rand(n, 4, generator=g, dtype=torch.float64) * 10
    return {"x": torch.randn(2, n, 8, generator=g, dtype=torch.float64), "cos": angles.cos(), "sin": angles.sin()}


ANY_SHAPE = frozenset({"scalar", "flat", "mismatched"})  # element-wise: every shape is valid
ONE_ARRAY = frozenset({"mismatched"})  # nothing else fixes the shape
TOKENS = frozenset(
    {"strided", "expanded", "float32", "integers", "huge", "subnormal", "nan", "inf", "complex", "bool", "object"}
)
# ^ token sequences are Python lists of any hashable tokens (ids, strings, floats): no dtype or layout to vary


def _dense_map(x, a, b):
    return (
        torch.as_tensor(x).double()
        @ orthogonal_map(torch.as_tensor(a).double(), torch.as_tensor(b).double(), kind="rotation").T
    )


def _exact_rope(x, cos, sin):
    return apply_rotary(x.double(), cos.double(), sin.double(), backend="torch")


ENTRIES = [
    Entry(
        "orthogonal_map",
        "a",
        lambda g, n: {
            "a": torch.randn(n + 2, generator=g, dtype=torch.float64),
            "b": torch.randn(n + 2, generator=g, dtype=torch.float64),
        },
        lambda a, b: orthogonal_map(a, b),
    ),
    Entry(
        "apply_orthogonal_map",
        "x",
        lambda g, n: {
            "x": torch.randn(n + 1, 6, generator=g, dtype=torch.float64),
            "a": torch.randn(6, generator=g, dtype=torch.float64),
            "b": torch.randn(6, generator=g, dtype=torch.float64),
        },
        lambda x, a, b: apply_orthogonal_map(x, a, b, kind="rotation"),
        exact=_dense_map,
        valid=frozenset({"flat"}),
    ),
    Entry(
        "low_rank_factors",
        "b",
        lambda g, n: {
            "a": torch.randn(n + 2, generator=g, dtype=torch.float64),
            "b": torch.randn(n + 2, generator=g, dtype=torch.float64),
        },
        lambda a, b: torch.cat([t.reshape(-1) for t in low_rank_factors(a, b) if isinstance(t, torch.Tensor)]),
    ),
    Entry(
        "apply_rotary",
        "x",
        _rope_tables,
        lambda x, cos, sin: apply_rotary(x, cos, sin),
        exact=_exact_rope,
        valid=frozenset({"mismatched", "flat"}),
    ),  # a wider x: the extra coordinate passes through; no batch dim: fine
    Entry("apply_rotary(cos)", "cos", _rope_tables, lambda x, cos, sin: apply_rotary(x, cos, sin), exact=_exact_rope),
    Entry(
        "RotaryEmbedding",
        "x",
        lambda g, n: {"x": torch.randn(1, 2, n + 1, 16, generator=g)},
        lambda x: RotaryEmbedding(16)(x),
        exact=lambda x: RotaryEmbedding(16, backend="torch")(x.double()),
        valid=frozenset({"flat"}),
        skip=ONE_ARRAY,
    ),
    Entry(
        "sinusoidal_table",
        "positions",
        lambda g, n: {"positions": torch.arange(n + 1, dtype=torch.float64) * 1.5},
        lambda positions: sinusoidal_table(positions, 8),
        valid=ANY_SHAPE,
    ),
    Entry(
        "relative_inner_products",
        "distances",
        lambda g, n: {"distances": np.arange(n + 1, dtype=np.float64) * 3},
        lambda distances: relative_inner_products(distances, 16),
        valid=ANY_SHAPE,
    ),
    Entry(
        "sinusoidal_table_nd",
        "positions",
        lambda g, n: {"positions": torch.rand(n + 1, 2, generator=g, dtype=torch.float64) * 9},
        lambda positions: sinusoidal_table_nd(positions, 8),
        valid=frozenset({"flat"}),
    ),  # one point: fine
    Entry(
        "integral_approximation",
        "distances",
        lambda g, n: {"distances": np.arange(n + 1, dtype=np.float64) * 3},
        lambda distances: integral_approximation(distances, 16, nodes=256),
        valid=ANY_SHAPE,
    ),
    Entry(
        "convert_layout",
        "weight",
        lambda g, n: {"weight": torch.randn(2 * 8, n + 1, generator=g, dtype=torch.float64)},
        lambda weight: convert_layout(weight, 2, source="half", target="interleaved"),
        exact=lambda weight: convert_layout(torch.as_tensor(weight).double(), 2, source="half", target="interleaved"),
        valid=frozenset({"mismatched", "flat"}),  # a wider weight is more input features; a row is a bias
        skip=frozenset({"complex", "bool", "object"}),
    ),  # a row permutation: any dtype is permuted as it is
    Entry(
        "mitchell_mul",
        "a",
        lambda g, n: {"a": torch.randn(n + 1, 3, generator=g), "b": torch.randn(n + 1, 3, generator=g)},
        lambda a, b: mitchell.mul(a, b),
        exact=lambda a, b: torch.as_tensor(a).double() * torch.as_tensor(b).double(),
        valid=frozenset({"scalar", "flat"}),
    ),
    Entry(
        "mitchell_div",
        "b",
        lambda g, n: {"a": torch.randn(n + 1, 3, generator=g), "b": torch.randn(n + 1, 3, generator=g)},
        lambda a, b: mitchell.div(a, b),
        exact=lambda a, b: (torch.as_tensor(a) / torch.as_tensor(b)).double(),
        valid=frozenset({"scalar", "flat"}),
    ),
    Entry(
        "mitchell_log2",
        "a",
        lambda g, n: {"a": torch.rand(n + 1, 3, generator=g) + 0.1},
        lambda a: mitchell.log2(a),
        exact=lambda a: torch.log2(torch.as_tensor(a)).double(),
        valid=ANY_SHAPE,
    ),
    Entry(
        "mitchell_exp2",
        "y",
        lambda g, n: {"y": torch.randn(n + 1, 3, generator=g)},
        lambda y: mitchell.exp2(y),
        exact=lambda y: torch.exp2(torch.as_tensor(y)).double(),
        valid=ANY_SHAPE,
    ),
    Entry(
        "mitchell_matmul",
        "a",
        lambda g, n: {"a": torch.randn(n + 1, 5, generator=g), "b": torch.randn(5, 4, generator=g)},
        lambda a, b: mitchell.matmul(a, b),
        exact=lambda a, b: torch.as_tensor(a).double() @ torch.as_tensor(b).double(),
        valid=frozenset({"flat"}),
    ),
    Entry(
        "MitchellLinear",
        "x",
        lambda g, n: {"x": torch.randn(n + 1, 5, generator=g)},
        lambda x: _mitchell_linear()(x),
        exact=lambda x: torch.nn.functional.linear(x.double(), _mitchell_linear().weight.double()),
        valid=frozenset({"flat"}),
    ),
    Entry(
        "MitchellConv2d",
        "x",
        lambda g, n: {"x": torch.randn(n + 1, 2, 5, 5, generator=g)},
        lambda x: _mitchell_conv()(x),
        exact=lambda x: torch.nn.functional.conv2d(x.double(), _mitchell_conv().weight.double()),
        skip=ONE_ARRAY,
    ),
    Entry(
        "estimate_r",
        "P",
        lambda g, n: {"P": _transition(g, n + 2)},
        lambda P: estimate_r(P, probes=4).value,
        skip=ONE_ARRAY,
    ),
    Entry("exact_r", "P", lambda g, n: {"P": _transition(g, n + 2)}, lambda P: exact_r(P), skip=ONE_ARRAY),
    Entry(
        "bounds",
        "P",
        lambda g, n: {"P": _transition(g, n + 2)},
        lambda P: np.asarray(bounds(P).lower_trace),
        skip=ONE_ARRAY,
    ),
    Entry(
        "apply_decoding",
        "P",
        lambda g, n: {"P": _transition(g, n + 2)},
        lambda P: apply_decoding(P, "topk=2"),
        skip=ONE_ARRAY,
    ),
    Entry(
        "estimate",
        "ids",
        lambda g, n: {"ids": torch.randint(0, 4, (n + 5,), generator=g).numpy()},
        lambda ids: transition_matrix(ids, 4, alpha=0.5),
        skip=frozenset({"mismatched", "huge", "subnormal"}),
    ),
    Entry(
        "seq_rep_n",
        "seqs",
        lambda g, n: {"seqs": [torch.randint(0, 5, (n + 8,), generator=g).tolist()]},
        lambda seqs: seq_rep_n(seqs, n=2),
        skip=TOKENS | ONE_ARRAY,
    ),
    Entry(
        "find_loops",
        "seqs",
        lambda g, n: {"seqs": [torch.randint(0, 3, (n + 12,), generator=g).tolist()]},
        lambda seqs: np.asarray(find_loops(seqs).period, dtype=float),
        skip=TOKENS | ONE_ARRAY,
    ),
    Entry(
        "summary",
        "seqs",
        lambda g, n: {"seqs": [torch.randint(0, 3, (n + 12,), generator=g).tolist()]},
        lambda seqs: np.asarray(list(summary(seqs).values()), dtype=float),
        skip=TOKENS | ONE_ARRAY,
    ),
    Entry(
        "info_nce",
        "q",
        lambda g, n: {
            "q": torch.randn(n + 2, 6, generator=g, dtype=torch.float64),
            "d": torch.randn(n + 2, 6, generator=g, dtype=torch.float64),
        },
        lambda q, d: info_nce(q, d),
    ),
    Entry(
        "info_nce_tiled",
        "d",
        lambda g, n: {
            "q": torch.randn(n + 2, 6, generator=g, dtype=torch.float64),
            "d": torch.randn(n + 2, 6, generator=g, dtype=torch.float64),
        },
        lambda q, d: info_nce_tiled(q, d, tile=2),
    ),
    Entry(
        "InfoNCE",
        "q",
        lambda g, n: {"q": torch.randn(n + 2, 6, generator=g), "d": torch.randn(n + 2, 6, generator=g)},
        lambda q, d: InfoNCE(temperature=0.1)(q, d),
    ),
    # object arrays of numbers are valid for scikit-learn estimators (its check_dtype_object requires them)
    Entry(
        "Whitening",
        "X",
        lambda g, n: {"X": torch.randn(n + 20, 4, generator=g, dtype=torch.float64)},
        lambda X: Whitening().fit(X).transform(X),
        valid=frozenset({"object"}),
        skip=ONE_ARRAY,
    ),
]


def _mitchell_conv() -> MitchellConv2d:
    torch.manual_seed(0)
    return MitchellConv2d(2, 3, 3, bias=False)


def _mitchell_linear() -> MitchellLinear:
    torch.manual_seed(0)
    return MitchellLinear(5, 3)


# variant -> (equivalent to the valid input?, what it does)
VARIANTS = {
    "strided": (True, "a non-contiguous view of the same values"),
    "expanded": (True, "a zero-stride view (every row the same)"),
    "float32": (True, "the same values in float32"),
    "integers": (True, "integer values, as an integer dtype"),
    "huge": (True, "values times 1e30 (float64) or 1e18 (float32)"),
    "subnormal": (True, "values times 1e-310 (float64) or 1e-41 (float32)"),
    "nan": (False, "one NaN"),
    "inf": (False, "one +inf"),
    "complex": (False, "a complex dtype"),
    "bool": (False, "a bool dtype"),
    "object": (False, "a NumPy object array"),
    "empty": (False, "zero rows"),
    "scalar": (False, "a 0-d value"),
    "flat": (False, "one dimension fewer"),
    "mismatched": (False, "one more column than the other arguments"),
}


def _hostile(value: Any, variant: str) -> Any:
    """``value`` turned into ``variant`` (keeping its type: tensor, array or list of lists)."""
    if isinstance(value, list):
        t = torch.tensor(value, dtype=torch.float64)
        out = _hostile(t, variant)
        return out.tolist() if isinstance(out, torch.Tensor) and out.dim() else out
    as_numpy = isinstance(value, np.ndarray)
    t = torch.from_numpy(value) if as_numpy else value
    tiny = 1e-310 if t.dtype == torch.float64 else 1e-41
    big = 1e30 if t.dtype == torch.float64 else 1e18
    if variant == "strided":
        out = torch.stack([t, t * 0 - 7], dim=-1)[..., 0]  # every other element of a bigger buffer
    elif variant == "expanded":
        out = t[:1].expand(t.shape) if t.dim() else t
    elif variant == "float32":
        out = t.float() if t.is_floating_point() else t
    elif variant == "integers":
        out = (t * 3).round().to(torch.int64) if t.is_floating_point() else t
    elif variant == "huge":
        out = t * big if t.is_floating_point() else t
    elif variant == "subnormal":
        out = t * tiny if t.is_floating_point() else t
    elif variant in ("nan", "inf"):
        if t.numel() == 0:
            return None  # nowhere to put it
        out = t.clone().double() if not t.is_floating_point() else t.clone()
        out.view(-1)[0] = float(variant)
    elif variant == "complex":
        out = t.to(torch.complex128)
    elif variant == "bool":
        out = t > 0
    elif variant == "object":
        return np.asarray(t.numpy(), dtype=object)
    elif variant == "empty":
        out = t[:0] if t.dim() else t.reshape(0)
    elif variant == "scalar":
        out = t.reshape(-1)[0] if t.numel() else torch.tensor(1.5, dtype=t.dtype)
    elif variant == "flat":
        out = t[0] if t.dim() and t.shape[0] else t.reshape(-1)[:0]  # one dimension fewer: the first row
    elif variant == "mismatched":
        out = torch.cat([t, t[..., :1]], dim=-1) if t.dim() else t
    else:
        raise AssertionError(variant)
    return out.numpy() if as_numpy else out


def _floats(result: Any) -> torch.Tensor:
    if isinstance(result, torch.Tensor):
        return result.detach().double().reshape(-1)
    if isinstance(result, (float, int, np.floating, np.integer)):
        return torch.tensor([float(result)], dtype=torch.float64)
    if hasattr(result, "toarray"):
        result = result.toarray()
    return torch.from_numpy(np.asarray(result, dtype=np.float64)).reshape(-1)


def _names_argument(exc: BaseException, arg: str) -> bool:
    return re.search(rf"(?<![A-Za-z_]){re.escape(arg)}(?![A-Za-z_])", str(exc)) is not None


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous().clone()
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).copy()
    return value


@pytest.mark.filterwarnings("ignore::kexue.whitening.RankDeficientWarning")  # an expanded X has rank 1: said, by design
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
@HOSTILE
@given(size=st.integers(0, 5), seed=st.integers(0, 2**31 - 1))
def test_hostile_input(entry: Entry, variant: str, size: int, seed: int) -> None:
    if variant in entry.skip:
        return  # a Python list of token ids has no strides or dtype to vary
    g = torch.Generator().manual_seed(seed)
    kwargs = entry.build(g, size)
    equivalent = VARIANTS[variant][0] or variant in entry.valid
    bad = _hostile(kwargs[entry.arg], variant)
    if bad is None:
        return  # the variant does not apply to this draw (e.g. a NaN in an empty tensor)
    hostile_kwargs = {**kwargs, entry.arg: bad}
    try:
        result = entry.call(**hostile_kwargs)
    except (ValueError, TypeError) as exc:
        assert _names_argument(exc, entry.arg), f"{entry.name}/{variant}: the error does not name {entry.arg!r}: {exc}"
        return
    got = _floats(result)
    if entry.exact is not None and variant in ("nan", "inf", "huge", "subnormal"):
        # IEEE semantics: non-finite exactly where the exact computation has them
        want = _floats(entry.exact(**hostile_kwargs))
        assert torch.equal(torch.isfinite(got), torch.isfinite(want)), f"{entry.name}/{variant}: {got} vs exact {want}"
        return
    if equivalent:
        # the same values through a plain contiguous copy of what was passed
        reference = _floats(entry.call(**{**kwargs, entry.arg: _plain(bad)}))
        assert got.shape == reference.shape
        assert bool(torch.isfinite(got).all()), f"{entry.name}/{variant}: a silent NaN or inf from finite input: {got}"
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-30)
        return
    if variant == "empty":
        assert got.numel() == 0 or torch.isfinite(got).all(), f"{entry.name}/empty: {got}"
        return
    pytest.fail(f"{entry.name} accepted {VARIANTS[variant][1]} for {entry.arg!r} and returned {result!r}"[:500])
