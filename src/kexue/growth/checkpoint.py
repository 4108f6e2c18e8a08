"""Grow a checkpoint folder into another: what ``kexue grow`` does, as a library function.

:func:`grow_checkpoint` loads a HuggingFace checkpoint (sharded safetensors too), widens it
(``width``, ``mode``), widens its feed-forward layers (``ffn``), deepens it (``depth``), copies
the experts of a mixture-of-experts model (``experts``), writes
the grown model (sharded past ``max_shard_size``) with the source's tokenizer and other
non-weight files, and a parity report, ``growth_parity.json``. That report holds the largest
logit change on a fixed probe batch, in float32 and in float64, the second grown again from a
float64 copy with the same noise. The output folder is written under a temporary name and
renamed, so an interrupted or failed run leaves no half-written folder. Before anything is
loaded, the grown size (parameters and bytes, per dtype) is planned on the meta device from the
config alone (:func:`plan_checkpoint`; ``grow_checkpoint(..., dry_run=True)``) and reported.

Memory: the small model, the grown model (built on the meta device and filled in place, never
a second copy of itself), and after it is saved and released, its float64 twin for the parity
check. At no time do two copies of the large model exist.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from kexue._shared import check_bool, check_choice, check_int, num_layers
from kexue.data import quiet_offline_transformers
from kexue.growth._build import check_noise, hf_config
from kexue.growth.depth import deepen
from kexue.growth.moe import add_experts
from kexue.growth.parity import float64_norms, max_logit_difference, output_scale
from kexue.growth.widen import MODES, Mode, widen, widen_ffn

__all__ = ["grow_checkpoint", "plan_checkpoint"]

_DTYPE = torch.float32  # the dtype the checkpoint is loaded, grown and written in


def _model_class(config: PretrainedConfig) -> Any:
    """The class of ``config.architectures[0]`` (``AutoModel`` when it names none transformers has)."""
    arch = config.architectures[0] if config.architectures else None
    return (getattr(transformers, arch, None) if arch else None) or transformers.AutoModel


def _cannot_load(src: Path, exc: Exception) -> ValueError:
    return ValueError(
        f"src {src}: cannot load the checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
    )


def _config(src: Path) -> PretrainedConfig:
    quiet_offline_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(src)
    except Exception as exc:  # a corrupt config: the user's input, not a bug
        raise _cannot_load(src, exc) from None


def _load(src: Path) -> tuple[PretrainedConfig, PreTrainedModel]:
    config = _config(src)
    try:
        return config, _model_class(config).from_pretrained(src, dtype=_DTYPE).eval()
    except Exception as exc:  # truncated or missing weights: the user's input, not a bug
        raise _cannot_load(src, exc) from None


def _size(model: torch.nn.Module) -> dict[str, Any]:
    """Parameters and bytes of ``model`` (tied weights once, as ``save_pretrained`` writes them), in
    all and per dtype: ``{"parameters": n, "bytes": b, "dtypes": {"float32": {"parameters": n, "bytes": b}}}``."""
    dtypes: dict[str, dict[str, int]] = {}
    for p in model.parameters():
        entry = dtypes.setdefault(str(p.dtype).removeprefix("torch."), {"parameters": 0, "bytes": 0})
        entry["parameters"] += p.numel()
        entry["bytes"] += p.numel() * p.element_size()
    return {
        "parameters": sum(d["parameters"] for d in dtypes.values()),
        "bytes": sum(d["bytes"] for d in dtypes.values()),
        "dtypes": dtypes,
    }


_Grow = Callable[[PreTrainedModel], PreTrainedModel]


def _plan(src: Path, grow: _Grow) -> dict[str, Any]:
    """The small and the grown model's sizes, from ``src``'s config alone: both are built on the
    meta device (no weight is read or allocated) and grown there."""
    config = _config(src)
    try:
        with torch.device("meta"):
            small = _model_class(config)(config).to(_DTYPE)
    except Exception as exc:
        raise _cannot_load(src, exc) from None
    return {"small": _size(small), "large": _size(grow(small))}


def _grower(width: int, mode: Mode, depth: int, ffn: int | None, experts: int, noise: float, seed: int) -> _Grow:
    """The composed operator: experts, then width, then the feed-forward, then depth."""

    def grow(model: PreTrainedModel) -> PreTrainedModel:
        if experts > 1:
            model = add_experts(model, experts, noise=noise, seed=seed + 2)
        if width > 1:
            model = widen(model, width, mode=mode, noise=noise, seed=seed)
        if ffn is not None:
            model = widen_ffn(model, ffn, noise=noise, seed=seed + 1)
        if depth > 1:
            model = deepen(model, [i for i in range(num_layers(hf_config(model))) for _ in range(depth - 1)])
        return model

    return grow


def _check_growth(src: Path, width: int, mode: Mode, depth: int, ffn: int | None, experts: int, noise: float) -> None:
    check_int("width", width, 1)
    check_int("depth", depth, 1)
    check_int("experts", experts, 1)
    check_choice("mode", mode, MODES)
    if ffn is not None:
        check_int("ffn", ffn, 1)
    check_noise(noise)
    if width == 1 and depth == 1 and ffn is None and experts == 1:
        raise ValueError("nothing to do: give width >= 2, depth >= 2, experts >= 2 and/or ffn")
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"src {src} has no config.json")


def _check(
    src: Path, dst: Path, width: int, mode: Mode, depth: int, ffn: int | None, experts: int, noise: float
) -> None:
    _check_growth(src, width, mode, depth, ffn, experts, noise)
    if dst.exists():
        raise FileExistsError(f"dst {dst} exists; choose a new folder")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"dst {dst}: its parent {dst.parent} is not an existing folder")


def plan_checkpoint(
    src: str | os.PathLike,
    *,
    width: int = 1,
    depth: int = 1,
    ffn: int | None = None,
    experts: int = 1,
    mode: Mode = "heads",
) -> dict[str, Any]:
    """The size of what :func:`grow_checkpoint` would write, planned on the meta device from
    ``src``'s ``config.json`` alone (no weight is read: a checkpoint too large to load plans in
    well under a second).

    Args:
        src, width, depth, ffn, experts, mode: as for :func:`grow_checkpoint`.

    Returns:
        ``{"small": size, "large": size}``, each size ``{"parameters": n, "bytes": b, "dtypes":
        {dtype: {"parameters": n, "bytes": b}}}`` (tied weights counted once; the checkpoint is
        grown and written in float32).

    Example:
        >>> plan = plan_checkpoint("path/to/small", width=2)  # doctest: +SKIP
        >>> plan["large"]["bytes"]  # doctest: +SKIP
    """
    src = Path(src)
    _check_growth(src, width, mode, depth, ffn, experts, 0.0)
    return _plan(src, _grower(width, mode, depth, ffn, experts, 0.0, 0))


def grow_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    width: int = 1,
    depth: int = 1,
    ffn: int | None = None,
    experts: int = 1,
    mode: Mode = "heads",
    noise: float = 0.0,
    seed: int = 0,
    max_shard_size: str | int = "5GB",
    dry_run: bool = False,
    on_plan: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write a grown copy of the checkpoint ``src`` to ``dst`` (which must not exist); returns the parity report.

    The grown size is planned first, on the meta device (:func:`plan_checkpoint`), and reported
    as ``planned``; with ``dry_run=True`` the arguments and folders are checked, the plan is
    returned (``{"planned": ...}``) and nothing is loaded or written.

    Args:
        src: a HuggingFace checkpoint folder (``config.json`` and weights, sharded or not).
        dst: the new folder.
        width: hidden and feed-forward width factor ``k`` (1: unchanged).
        depth: depth factor: ``depth − 1`` identity blocks after every layer (1: unchanged).
        ffn: the feed-forward width of the result (after ``width``), any size ≥ the current one.
        experts: mixture-of-experts models: every expert copied this many times, and as many
            times more experts per token (:func:`~kexue.growth.add_experts`; applied first).
        mode: ``"heads"`` (copies heads, exact with RoPE) or ``"head_dim"`` (the article's wider heads).
        noise: zero-sum symmetry-breaking noise, relative std (0, the default: exact copies; the
            function is kept either way).
        seed: the noise's seed.
        max_shard_size: passed to ``save_pretrained``: larger models are written as sharded safetensors.
        dry_run: plan only (see above).
        on_plan: called with the plan once the checkpoint has loaded, before anything is written
            (``kexue grow`` prints it there).

    Returns:
        The report written to ``dst/growth_parity.json``: the settings, the planned sizes
        (``planned``, as :func:`plan_checkpoint` returns them), the parameter counts, and
        ``float32`` / ``float64`` ``max_abs`` logit differences (``float32.max_rel`` relative to the
        largest logit).
    """
    src, dst = Path(src), Path(dst)
    _check(src, dst, width, mode, depth, ffn, experts, noise)
    check_bool("dry_run", dry_run)
    grow = _grower(width, mode, depth, ffn, experts, noise, seed)
    planned = _plan(src, grow)
    if dry_run:
        return {"planned": planned}
    config, small = _load(src)
    if on_plan is not None:
        on_plan(planned)
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    try:
        report = _write(
            tmp,
            src,
            small,
            grow,
            config,
            max_shard_size,
            {
                "model": str(src),
                "width": width,
                "mode": mode,
                "depth": depth,
                "ffn": ffn,
                "experts": experts,
                "noise": noise,
                "planned": planned,
            },
        )
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed or interrupted run leaves no half-written folder
        raise
    return report


def _write(
    tmp: Path,
    src: Path,
    small: PreTrainedModel,
    grow: _Grow,
    config: PretrainedConfig,
    max_shard_size: str | int,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Save the grown model, the source's other files and the parity report into ``tmp``."""
    g = torch.Generator().manual_seed(0)
    probe = {"input_ids": torch.randint(0, config.vocab_size, (2, 16), generator=g)}
    large = grow(small)
    report = {
        **settings,
        "parameters": {
            "small": sum(p.numel() for p in small.parameters()),
            "large": sum(p.numel() for p in large.parameters()),
        },
    }
    report["float32"] = {"max_abs": max_logit_difference(small, large, probe)}
    report["float32"]["max_rel"] = report["float32"]["max_abs"] / output_scale(small, probe)
    large.save_pretrained(tmp, max_shard_size=max_shard_size)
    del large  # released before the float64 twin exists: never two copies of the large model
    for extra in src.iterdir():  # tokenizer and other non-weight files travel along
        if (
            extra.is_file()
            and not extra.name.startswith(("config.json", "model", "pytorch_model"))
            and not (tmp / extra.name).exists()
        ):
            shutil.copy2(extra, tmp / extra.name)
    small64 = small.double()
    if getattr(small64.config, "_experts_implementation", None) not in (None, "eager"):
        small64.set_experts_implementation("eager")  # grouped_mm has no float64 kernel; the grown twin inherits it
    with float64_norms():
        report["float64"] = {"max_abs": max_logit_difference(small64, grow(small64), probe)}  # same seed: same noise
    (tmp / "growth_parity.json").write_text(json.dumps(report, indent=2))
    return report
