"""M-RoPE position ids against transformers' get_rope_index (Qwen2-VL), and the decode delta."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kexue.positional.mrope import mrope_decode_positions, mrope_position_ids

transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel  # noqa: E402


def _hf_rope_index(layouts: list[list], merge: int, pad_left: list[int]):
    """transformers' own get_rope_index on token types built from ``layouts`` (left padding per row)."""
    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge)))
    model.get_vision_position_ids = lambda *a, **k: Qwen2VLModel.get_vision_position_ids(model, *a, **k)
    rows, images, videos = [], [], []
    for layout in layouts:
        types = []
        for item in layout:
            if isinstance(item, int):
                types += [0] * item
            else:
                kind, grid = item
                (images if kind == "image" else videos).append(grid)
                types += [1 if kind == "image" else 2] * (grid[0] * (grid[1] // merge) * (grid[2] // merge))
        rows.append(types)
    length = max(len(r) + p for r, p in zip(rows, pad_left))
    token_types = torch.zeros(len(rows), length, dtype=torch.int32)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (types, pad) in enumerate(zip(rows, pad_left)):
        start = length - len(types)
        token_types[i, start:] = torch.tensor(types, dtype=torch.int32)
        mask[i, start:] = 1
    ids = torch.ones_like(mask)
    grid = lambda g: torch.tensor(g, dtype=torch.long) if g else None  # noqa: E731
    return Qwen2VLModel.get_rope_index(model, ids, token_types, grid(images), grid(videos), mask), mask


LAYOUTS = [
    [5, ("image", (1, 4, 6)), 7],
    [3, ("video", (3, 4, 4)), 2, ("image", (1, 8, 2)), 4],
    [("image", (1, 2, 2)), 9],
]


@pytest.mark.parametrize("merge", [1, 2])
def test_position_ids_equal_get_rope_index(merge: int) -> None:
    (hf_positions, hf_deltas), mask = _hf_rope_index(LAYOUTS, merge, pad_left=[0, 0, 0])
    for row, layout in enumerate(LAYOUTS):
        segments = [item if isinstance(item, int) else item[1] for item in layout]
        ours, delta = mrope_position_ids(segments, spatial_merge_size=merge)
        keep = mask[row].bool()
        assert torch.equal(ours, hf_positions[:, row, keep].T), layout
        assert delta == int(hf_deltas[row])


def test_text_only_is_1d_and_decode_continues_after_the_image() -> None:
    positions, delta = mrope_position_ids([6])
    assert torch.equal(positions, torch.arange(6)[:, None].expand(-1, 3)) and delta == 0
    positions, delta = mrope_position_ids([2, (1, 4, 8), 1], spatial_merge_size=2)  # 2 x 4 merged grid = 8 tokens
    assert positions.shape == (11, 3) and delta == int(positions.max()) + 1 - 11 == -4
    following = mrope_decode_positions(delta, cache_length=11, new_tokens=3)
    assert following.tolist() == [[7, 7, 7], [8, 8, 8], [9, 9, 9]]  # continues from max + 1 = 7
    assert int(following[0, 0]) == int(positions.max()) + 1


@pytest.mark.parametrize("bad,match", [([(1, 2)], "grid"), ([-1], "non-negative"), ([(1, 1, 4)], "smaller than")])
def test_bad_segments_are_named(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        mrope_position_ids(bad, spatial_merge_size=2)
