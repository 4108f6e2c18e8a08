"""Side-by-side benchmarks for ``kexue bench``: kexue and its peers, same inputs, same process.

A technique's ``benchmark.py`` builds one :class:`BenchSuite` and registers cases::

    BENCH = BenchSuite("orthogonal")

    @BENCH.case
    def apply(bench: Bench) -> None:
        x = ...
        ours = bench.time("apply 1M x 768", "kexue", lambda: apply_orthogonal_map(x, a, b))
        peer = bench.time("apply 1M x 768", "dense T + matmul", lambda: x @ T.T)
        bench.ratio("orthogonal.apply_vs_matmul", peer.median_s / ours.median_s, target=5.0)

Timing: one warm-up call, then ``repeats`` timed calls; the median is reported (CUDA is
synchronised around each call). The result of each call is dropped before the next.

Memory (``peak_bytes``): on CUDA, the growth of ``torch.cuda.max_memory_allocated`` during
the warm-up call. On Linux CPUs, the growth of the process's peak resident set (``VmHWM``,
reset through ``/proc/self/clear_refs``) during the warm-up call: the memory the call newly
touched. Elsewhere it is omitted.
"""

from __future__ import annotations

import gc
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from kexue._optional import skip_reason

__all__ = ["Bench", "BenchSuite", "CaseResult", "Ratio", "interleaved_times"]


@dataclass(frozen=True)
class CaseResult:
    """One implementation's times on one case.

    Args:
        technique: the technique's name.
        case: the case's name (shared by the implementations compared).
        impl: the implementation's name (kexue, a peer, a floor).
        median_s: the median time in seconds.
        times_s: every timed call's seconds.
        peak_bytes: the memory the warm-up call newly used, where measured.
        params: the case's sizes and settings.
    """

    technique: str
    case: str
    impl: str
    median_s: float
    times_s: list[float]
    peak_bytes: int | None
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (``peak_bytes`` left out where it was not measured).

        Returns:
            A JSON-able mapping.
        """
        payload = asdict(self)
        if self.peak_bytes is None:
            del payload["peak_bytes"]
        return payload


@dataclass(frozen=True)
class Ratio:
    """A ratio of two times (or sizes), judged against a target when it has one.

    Args:
        id: the ratio's stable dotted id.
        value: the ratio.
        target: the value to reach, if any.
        higher_is_better: whether ``value >= target`` (else ``<=``) meets it.
        met: the verdict (None without a target).
        description: what the ratio means.
    """

    id: str
    value: float
    target: float | None
    higher_is_better: bool
    met: bool | None
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ratio as JSON.

        Returns:
            A JSON-able mapping.
        """
        return asdict(self)


class PeakMemory:
    """Peak-memory probe for one device (see module docstring).

    Args:
        device: the torch device the cases run on.
    """

    _torch: ModuleType

    def __init__(self, device: str) -> None:
        # start-up time: `kexue --help` imports kexue.report, which must not import torch
        import torch

        self.device = device
        self.cuda = device.startswith("cuda")
        self._clear_refs = Path("/proc/self/clear_refs")
        self.available = self.cuda or self._hwm_resettable()
        self._torch = torch

    def _hwm_resettable(self) -> bool:
        try:
            self._clear_refs.write_text("5")
            return self._status("VmHWM") is not None
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        except OSError:
            return None
        return int(match.group(1)) * 1024 if match else None

    def start(self) -> int:
        """Reset the peak and return the baseline.

        Returns:
            The bytes in use now (CUDA: allocated; CPU: resident).
        """
        if self.cuda:
            self._torch.cuda.synchronize(self.device)
            self._torch.cuda.reset_peak_memory_stats(self.device)
            return self._torch.cuda.memory_allocated(self.device)
        self._clear_refs.write_text("5")
        return self._status("VmRSS") or 0

    def stop(self, base: int) -> int:
        """The peak's growth since :meth:`start`.

        Args:
            base: what :meth:`start` returned.

        Returns:
            The bytes newly used at the peak.
        """
        if self.cuda:
            self._torch.cuda.synchronize(self.device)
            return max(0, self._torch.cuda.max_memory_allocated(self.device) - base)
        return max(0, (self._status("VmHWM") or 0) - base)


def run_in_fresh_process(module: str, function: str, *args: Any, timeout: float = 3600) -> Any:
    """``module.function(*args)`` in a new Python process; its JSON-able result.

    For peak-memory cases: a fresh process has no high-water mark from earlier cases.
    ``args`` must be literals (they are written into the child's command line with ``repr``).

    Args:
        module: the module holding ``function``.
        function: the function's name.
        *args: its arguments (literals).
        timeout: seconds before the child is abandoned.

    Returns:
        What the function returned, through JSON.

    Raises:
        RuntimeError: the child failed, with the end of its stderr.
    """
    call = f"{function}({', '.join(repr(a) for a in args)})"
    code = f"import json; from {module} import {function}; print(json.dumps({call}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{module}.{call} failed in its child process: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Bench:
    """The timer handed to each benchmark case.

    Args:
        technique: the technique's name.
        quick: smaller inputs, for a fast look.
        device: the torch device to run on.
        repeats: timed calls per case.
        cases: the results recorded so far.
        ratios: the ratios recorded so far.
        skipped: the cases that could not run here.
    """

    technique: str
    quick: bool = False
    device: str = "cpu"
    repeats: int = 5
    cases: list[CaseResult] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"technique", "case", "reason"}: could not run here

    def __post_init__(self) -> None:
        self._memory = PeakMemory(self.device)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch  # start-up time: `kexue --help` imports kexue.report, which must not import torch

            torch.cuda.synchronize(self.device)

    def time(
        self,
        case: str,
        impl: str,
        fn: Callable[[], Any],
        *,
        repeats: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> CaseResult:
        """Warm up once (measuring peak memory), then time ``repeats`` calls of ``fn``.

        Args:
            case: the case's name.
            impl: the implementation's name.
            fn: the call to time (its result is dropped before the next call).
            repeats: timed calls (default: the bench's).
            params: the case's sizes and settings.

        Returns:
            The recorded result.
        """
        repeats = repeats or self.repeats
        gc.collect()
        peak = None
        if self._memory.available:
            base = self._memory.start()
            result = fn()
            peak = self._memory.stop(base)
        else:
            result = fn()
        del result
        times = []
        for _ in range(repeats):
            gc.collect()
            self._sync()
            start = time.perf_counter()
            result = fn()
            self._sync()
            times.append(time.perf_counter() - start)
            del result
        record = CaseResult(
            technique=self.technique,
            case=case,
            impl=impl,
            median_s=statistics.median(times),
            times_s=times,
            peak_bytes=peak,
            params=dict(params or {}),
        )
        self.cases.append(record)
        return record

    def record(self, case: str, impl: str, times: list[float], *, params: dict[str, Any] | None = None) -> CaseResult:
        """Record times measured by the case itself; the median is reported, peak memory is not measured.

        For when ``fn``-per-call timing does not fit, e.g. a share of a larger call.

        Args:
            case: the case's name.
            impl: the implementation's name.
            times: the measured seconds.
            params: the case's sizes and settings.

        Returns:
            The recorded result.
        """
        record = CaseResult(
            technique=self.technique,
            case=case,
            impl=impl,
            median_s=statistics.median(times),
            times_s=list(times),
            peak_bytes=None,
            params=dict(params or {}),
        )
        self.cases.append(record)
        return record

    def ratio(
        self,
        id: str,
        value: float,
        *,
        target: float | None = None,
        higher_is_better: bool = True,
        description: str = "",
    ) -> Ratio:
        """Record a ratio; with a ``target`` it is judged (``met``), without one only reported.

        Args:
            id: the ratio's stable dotted id.
            value: the ratio.
            target: the value to reach, if any.
            higher_is_better: whether ``value >= target`` (else ``<=``) meets it.
            description: what the ratio means.

        Returns:
            The recorded ratio.
        """
        met = None if target is None else (value >= target if higher_is_better else value <= target)
        record = Ratio(
            id=id,
            value=float(value),
            target=target,
            higher_is_better=higher_is_better,
            met=met,
            description=description,
        )
        self.ratios.append(record)
        return record


BenchCase = Callable[[Bench], None]


@dataclass
class BenchSuite:
    """The ordered benchmark cases of one technique.

    Args:
        technique: the technique's name.
        cases: the cases, in order (usually registered with :meth:`case`).
    """

    technique: str
    cases: list[BenchCase] = field(default_factory=list)

    def case(self, fn: BenchCase) -> BenchCase:
        """Decorator: register ``fn`` as the next case.

        Args:
            fn: the case.

        Returns:
            ``fn`` itself.
        """
        self.cases.append(fn)
        return fn

    def run_case(self, fn: BenchCase, bench: Bench) -> None:
        """Run one case; one that needs a missing extra or data is recorded in ``bench.skipped``.

        Args:
            fn: the case.
            bench: the timer it records into.
        """
        try:
            fn(bench)
        except Exception as exc:
            reason = skip_reason(exc)
            if reason is None:
                raise
            bench.skipped.append({"technique": self.technique, "case": fn.__name__, "reason": reason})


def interleaved_times(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Wall times of each call, measured round-robin, so that a drift of the machine's speed hits every call alike.

    One warm-up call each, then one call of each per round.

    Args:
        calls: name → the call to time.
        rounds: the number of rounds.

    Returns:
        Name → its seconds, one per round.
    """
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
