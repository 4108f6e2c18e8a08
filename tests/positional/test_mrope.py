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
    length = max(len(r) + p for r, p in zip(rows, pad_left, strict=True))
    token_types = torch.zeros(len(rows), length, dtype=torch.int32)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (types, _pad) in enumerate(zip(rows, pad_left, strict=True)):
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


@pytest.mark.parametrize(("bad", "match"), [([(1, 2)], "grid"), ([-1], "non-negative"), ([(1, 1, 4)], "smaller than")])
def test_bad_segments_are_named(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        mrope_position_ids(bad, spatial_merge_size=2)


def _tiny_vl(family: str):
    """A random-initialised Qwen2-VL or Qwen3-VL (vision tower of one block, 2x2 patches)."""
    torch.manual_seed(0)
    text = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    tokens = dict(image_token_id=120, video_token_id=121, vision_start_token_id=122, vision_end_token_id=123)
    if family == "qwen2_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        vision = dict(
            depth=1,
            embed_dim=32,
            num_heads=2,
            hidden_size=64,
            mlp_ratio=2,
            patch_size=2,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        )
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        return transformers.Qwen2VLForConditionalGeneration(config).eval()
    text.update(
        head_dim=16,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=48,
        num_heads=2,
        out_hidden_size=64,
        patch_size=2,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    return transformers.Qwen3VLForConditionalGeneration(config).eval()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_generation_with_the_kv_cache_uses_our_positions_and_tables(family: str) -> None:
    """A real (tiny, random) VL model generating for a left-padded batch of two different image
    prompts: at every step its text model receives exactly kexue's 3-D position ids (prompt:
    :func:`mrope_position_ids`; each new token: :func:`mrope_decode_positions` with that
    sequence's own delta), and kexue's M-RoPE rotates by exactly its cos/sin."""
    from kexue.positional.rope import RotaryEmbedding

    model = _tiny_vl(family)
    # sequence 0: 4 text, a 4 x 6 image (merged 2 x 3), 3 text; sequence 1: 2 text, a 6 x 4 image, 6 text
    segments = [[4, (1, 4, 6), 3], [2, (1, 6, 4), 6]]
    rows = [[5, 6, 7, 122] + [120] * 6 + [123, 8, 9], [11, 122] + [120] * 6 + [123, 12, 13, 14, 15, 16]]
    length = max(map(len, rows))
    ids, mask = torch.zeros(2, length, dtype=torch.long), torch.zeros(2, length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :], mask[i, length - len(row) :] = torch.tensor(row), 1
    seen = []
    rotary = model.model.language_model.rotary_emb
    hook = rotary.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((args[1].clone(), out[0].clone())), with_kwargs=True
    )
    new = 4
    try:
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=torch.randn(48, 24),
                image_grid_thw=torch.tensor([[1, 4, 6], [1, 6, 4]]),
                mm_token_type_ids=(ids == 120).int(),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
            )
    finally:
        hook.remove()
    assert len(seen) == new  # the prompt, then one call per new token with the cache
    ours = RotaryEmbedding.from_config(model.config.text_config, angle_dtype=torch.float64)
    for b, (segs, row) in enumerate(zip(segments, rows, strict=True)):
        positions, delta = mrope_position_ids(segs, spatial_merge_size=2)
        pad = length - len(row)
        assert torch.equal(seen[0][0][:, b, pad:].T, positions)
        for step in range(1, new):
            want = mrope_decode_positions(delta, len(row) + step - 1)
            assert torch.equal(seen[step][0][:, b, :].T, want), (b, step)
    for positions, hf_cos in seen:  # (3, B, T) ids -> transformers' (B, T, R) cos, each angle twice
        cos, _ = ours.cos_sin(positions.permute(1, 2, 0))
        torch.testing.assert_close(torch.cat((cos, cos), -1).float(), hf_cos, rtol=0, atol=2e-6)
