"""Multimodal RoPE (M-RoPE) of Qwen2-VL, Qwen2.5-VL and Qwen3-VL: frequencies and 3-D position ids.

A vision-language model's tokens carry three coordinates (temporal, height, width). Text
tokens have all three equal to their running index; an image or video becomes a grid of
tokens whose coordinates are their cell in the grid, offset by the running index; text after
it continues from there. Each rotary pair turns with one of the three coordinates
(:func:`mrope_frequencies`), so M-RoPE is the 2-D/N-D RoPE article's block solution
(kexue.fm/archives/8397) with one particular split of the pairs, and it reduces to 1-D RoPE on
text. :func:`mrope_position_ids` builds the coordinates from a token layout, as
transformers' ``get_rope_index`` does; :func:`mrope_decode_positions` continues them in
generation with a KV cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["MROPE_FAMILIES", "mrope_decode_positions", "mrope_frequencies", "mrope_layout", "mrope_position_ids"]


# M-RoPE (Qwen2-VL, arXiv 2409.12191; Qwen3-VL): the rotary pairs split between a temporal, a
# height and a width position. model_type -> (default sections in pairs, interleaved), as the
# families' rotary modules in transformers read them.
MROPE_FAMILIES: dict[str, tuple[tuple[int, int, int], bool]] = {
    "qwen2_vl": ((16, 24, 24), False),
    "qwen2_vl_text": ((16, 24, 24), False),
    "qwen2_5_vl": ((16, 24, 24), False),
    "qwen2_5_vl_text": ((16, 24, 24), False),
    "qwen3_vl": ((24, 20, 20), True),
    "qwen3_vl_text": ((24, 20, 20), True),
    "qwen3_vl_moe": ((24, 20, 20), True),
    "qwen3_vl_moe_text": ((24, 20, 20), True),
}


def mrope_layout(config: Any) -> tuple[tuple[int, ...], bool] | None:
    """``(sections, interleaved)`` of an M-RoPE config (``None`` for a 1-D RoPE model).

    Args:
        config: a transformers config (``rope_parameters["mrope_section"]``, or the family's default by
            ``model_type``).

    Returns:
        The sections in pairs and whether they interleave, or None.
    """
    parameters = getattr(config, "rope_parameters", None) or {}
    family = MROPE_FAMILIES.get(getattr(config, "model_type", ""))
    section = parameters.get("mrope_section") if isinstance(parameters, Mapping) else None
    if section is not None:
        sections = tuple(int(s) for s in section)
    elif family is not None:
        sections = family[0]
    else:
        return None
    interleaved = bool(parameters.get("mrope_interleaved", family[1] if family else False))
    return sections, interleaved


def mrope_frequencies(inv_freq: torch.Tensor, sections: tuple[int, ...], *, interleaved: bool = False) -> torch.Tensor:
    """The ``(3, R/2)`` frequency matrix ``F`` of M-RoPE: pair ``j`` keeps the 1-D ladder's
    ``θ_j`` and turns with one of the three coordinates (temporal, height, width).

    * contiguous (Qwen2-VL, Qwen2.5-VL): the first ``sections[0]`` pairs follow t, the next
      ``sections[1]`` h, the last ``sections[2]`` w;
    * interleaved (Qwen3-VL): pairs cycle t, h, w (pair ``j`` with ``j mod 3 = 1`` follows h
      while ``j < 3 sections[1]``, ``j mod 3 = 2`` follows w while ``j < 3 sections[2]``), the rest t.

    This is the article's N-D block solution (each pair rotates by ``p · F[:, j]`` with one
    non-zero entry per column), with one particular split, and with the ladder shared by the
    three axes instead of restarting for each. For text tokens, whose three coordinates are
    equal, ``p · F[:, j] = p θ_j``: 1-D RoPE.

    Args:
        inv_freq: the 1-D ladder ``θ`` ``(R/2,)``.
        sections: pairs per coordinate (t, h, w), summing to ``R/2``.
        interleaved: Qwen3-VL's cycling assignment instead of contiguous blocks.

    Returns:
        float64 ``(3, R/2)``.

    Example:
        >>> mrope_frequencies(torch.tensor([1.0, 0.1, 0.01]), (1, 1, 1))
        tensor([[1.0000, 0.0000, 0.0000],
                [0.0000, 0.1000, 0.0000],
                [0.0000, 0.0000, 0.0100]], dtype=torch.float64)
    """
    theta = torch.as_tensor(inv_freq, dtype=torch.float64).reshape(-1)
    pairs = theta.numel()
    if (
        len(sections) != 3
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sections)
        or sum(sections) != pairs
    ):
        raise ValueError(
            f"mrope_section={list(sections)!r} must be three non-negative pair counts summing to {pairs} "
            "(half the rotary width)"
        )
    j = torch.arange(pairs)
    if interleaved:
        axis = torch.zeros(pairs, dtype=torch.long)
        axis[(j % 3 == 1) & (j < 3 * sections[1])] = 1
        axis[(j % 3 == 2) & (j < 3 * sections[2])] = 2
    else:
        axis = torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
    freqs = torch.zeros(3, pairs, dtype=torch.float64)
    freqs[axis, j] = theta
    return freqs


def _grid(item: Any) -> tuple[int, int, int] | None:
    if isinstance(item, (bool, int)):
        return None
    values = tuple(int(v) for v in (item.tolist() if isinstance(item, torch.Tensor) else item))
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"a vision segment must be a (t, h, w) grid of positive sizes; got {item!r}")
    return values[0], values[1], values[2]


def mrope_position_ids(
    segments: Sequence[Any], *, spatial_merge_size: int = 1, time_interval: float = 1.0
) -> tuple[torch.Tensor, int]:
    """The ``(T, 3)`` position ids of one sequence, and its decode delta.

    Args:
        segments: the sequence in order: an ``int`` is that many text tokens; a ``(t, h, w)``
            grid (``image_grid_thw``/``video_grid_thw`` before merging) is one image or video,
            ``t · (h/m) · (w/m)`` tokens for ``m = spatial_merge_size``.
        spatial_merge_size: the vision tower's ``m`` (2 in Qwen2-VL).
        time_interval: temporal step between frames' positions (Qwen2.5-VL video:
            ``tokens_per_second · second_per_grid``; 1 for images).

    Returns:
        ``(positions, delta)``: text tokens get ``(i, i, i)`` for the running index ``i``; a
        grid's cell ``(a, b, c)`` gets ``(i + ⌊a · time_interval⌋, i + b, i + c)``, and the running
        index then advances by ``max(h, w) / m``, as transformers advances it. ``delta =
        max(position) + 1 − T`` continues the positions after the prompt (see
        :func:`mrope_decode_positions`).

    Example:
        >>> positions, delta = mrope_position_ids([2, (1, 4, 4), 1], spatial_merge_size=2)
        >>> positions.tolist(), delta
        ([[0, 0, 0], [1, 1, 1], [2, 2, 2], [2, 2, 3], [2, 3, 2], [2, 3, 3], [4, 4, 4]], -2)
    """
    if isinstance(spatial_merge_size, bool) or not isinstance(spatial_merge_size, int) or spatial_merge_size < 1:
        raise ValueError(f"spatial_merge_size={spatial_merge_size!r} must be a positive integer")
    parts: list[torch.Tensor] = []
    current = 0
    for item in segments:
        grid = _grid(item)
        if grid is None:
            if item < 0:
                raise ValueError(f"a text segment must be a non-negative token count; got {item!r}")
            parts.append((torch.arange(item) + current)[:, None].expand(-1, 3))
            current += item
            continue
        t, h, w = grid[0], grid[1] // spatial_merge_size, grid[2] // spatial_merge_size
        if h < 1 or w < 1:
            raise ValueError(f"grid {grid} is smaller than spatial_merge_size={spatial_merge_size}")
        tt, hh, ww = torch.meshgrid(
            (torch.arange(t) * time_interval).long(), torch.arange(h), torch.arange(w), indexing="ij"
        )
        parts.append(torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3) + current)
        current += max(h, w)
    positions = torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long)
    delta = int(positions.max()) + 1 - positions.shape[0] if positions.numel() else 0
    return positions, delta


def mrope_decode_positions(
    delta: int | torch.Tensor, cache_length: int, *, new_tokens: int = 1, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(new_tokens, 3)`` positions of tokens generated after a prompt: ``cache_length + k + delta``.

    The same on all three axes (generated tokens are text). A tensor ``delta`` is added on the device,
    never read back to the host (one call per decode step: no synchronisation on a GPU).

    Args:
        delta: the prompt's from :func:`mrope_position_ids`; a batch whose sequences differ needs each
            sequence's own delta (a stale delta from another batch shifts every new token).
        cache_length: every token already in the KV cache.
        new_tokens: how many positions to make.
        device: where they are made (the tensor ``delta``'s by default).

    Returns:
        ``(new_tokens, 3)`` integer positions.

    Example:
        >>> mrope_decode_positions(-2, 7, new_tokens=2).tolist()
        [[5, 5, 5], [6, 6, 6]]
    """
    for name, value in (("cache_length", cache_length), ("new_tokens", new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
    if isinstance(delta, torch.Tensor):
        device = device if device is not None else delta.device
        shift: int | torch.Tensor = delta.to(device)
    else:
        shift = int(delta)
    return (torch.arange(new_tokens, device=device) + cache_length + shift)[:, None].expand(-1, 3)
