"""A small ViT experiment the article could not run: which position encoding extrapolates on images?

The 2-D RoPE article (kexue.fm/archives/8397) ends without experiments. This trains a
tiny ViT on scikit-learn's bundled handwritten digits (1,797 images, 8×8, offline),
upsampled to 16×16 and cut into 2×2 patches (an 8×8 token grid), with four position
encodings:

* ``learned``: a learned absolute table (bicubically resized for another grid, the usual
  ViT practice);
* ``rope-1d-flat``: 1-D RoPE on the flattened index ``row · width + col``;
* ``rope-2d-axial``: the article's block solution;
* ``rope-mixed``: learnable mixed frequencies, one set per head.

Each model is evaluated on held-out digits at the training resolution and at 24×24 (a
12×12 grid): RoPE models either *extrapolate* (integer coordinates beyond the trained
range) or *interpolate* (coordinates scaled into the trained range, fractional).
Everything runs on CPU in seconds to minutes; the numbers are what they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kexue.positional.rope import RotaryEmbedding, grid_positions

__all__ = [
    "MODES",
    "VARIANTS",
    "Mode",
    "TinyViT",
    "Variant",
    "ViTResult",
    "load_digits_split",
    "run_experiment",
    "summarize",
    "train_and_evaluate",
]

Variant = Literal["learned", "rope-1d-flat", "rope-2d-axial", "rope-mixed"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
# "extrapolate": integer positions beyond the trained grid; "interpolate": positions scaled into it
Mode = Literal["extrapolate", "interpolate"]
MODES: tuple[Mode, ...] = get_args(Mode)
TRAIN_SIZE, TEST_SIZE, PATCH = 16, 24, 2


@dataclass
class ViTResult:
    """Accuracy of one variant and seed (fractions in [0, 1]).

    Args:
        variant: the position encoding.
        seed: the training seed.
        train_resolution: accuracy at the training resolution.
        extrapolate: at the larger resolution with integer positions beyond the trained grid (None for the
            learned table).
        interpolate: at the larger resolution with positions (or the learned table) scaled to the trained grid.
        seconds: training and evaluation time.
    """

    variant: Variant
    seed: int
    train_resolution: float
    extrapolate: float | None  # RoPE: integer positions beyond the trained grid
    interpolate: float  # positions (or the learned table) scaled to the trained grid
    seconds: float


def load_digits_split(
    *, seed: int = 0, test_fraction: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as float images in [0, 1], shape (N, 1, 8, 8), split with a fixed permutation.

    Args:
        seed: the permutation's seed.
        test_fraction: the held-out share.

    Returns:
        ``(train images, train labels, test images, test labels)``.
    """
    from sklearn.datasets import load_digits  # optional extra: sklearn

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def _patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 8, 8) → resize to size×size → (N, (size/PATCH)², PATCH²)."""
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = x.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (N, 1, g, g, P, P)
    return x.reshape(x.shape[0], -1, PATCH * PATCH)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.heads, self.rope = heads, rope
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, H, T, Dh) each
        if self.rope is not None:  # positions come from TinyViT.positions: valid by construction, so no host reads
            q, k = self.rope(q, positions, validate=False), self.rope(k, positions, validate=False)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, ``depth`` pre-LN blocks, mean pooling, linear head.

    Casting the model (``model.bfloat16()``) leaves its RoPE frequencies and angles in float32
    (see :class:`kexue.positional.rope.RotaryEmbedding`); positions are made on the input's
    device, and the blocks rotate without reading values back to the host.

    Args:
        variant: the position encoding, one of :data:`VARIANTS`.
        dim: the model width.
        heads: attention heads.
        depth: blocks.
        grid: the training grid's side in tokens.
    """

    def __init__(
        self, variant: Variant, *, dim: int = 64, heads: int = 4, depth: int = 2, grid: int = TRAIN_SIZE // PATCH
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not supported; accepted: {', '.join(VARIANTS)}")
        self.variant, self.grid = variant, grid
        self.embed = nn.Linear(PATCH * PATCH, dim)
        head_dim = dim // heads
        self.table = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02) if variant == "learned" else None
        factories: dict[str, Callable[[], RotaryEmbedding | None]] = {
            "learned": lambda: None,
            "rope-1d-flat": lambda: RotaryEmbedding(head_dim, base=100.0),
            "rope-2d-axial": lambda: RotaryEmbedding(head_dim, axes=2, base=100.0),
            "rope-mixed": lambda: RotaryEmbedding(
                head_dim, axes=2, frequencies="mixed", learnable=True, num_heads=heads, base=100.0
            ),
        }
        self.rope = factories[variant]()
        self.blocks = nn.ModuleList(_Block(dim, heads, self.rope) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def positions(
        self, grid: int, *, mode: Mode = "extrapolate", device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        """Token positions for a ``grid × grid`` input on ``device`` (float32 whatever the model's dtype).

        Args:
            grid: the input grid's side in tokens.
            mode: ``"extrapolate"`` integer coordinates, ``"interpolate"`` rescaled to the trained grid.
            device: where they are made.

        Returns:
            ``(T, 2)`` coordinates, ``(T,)`` flat indices for ``rope-1d-flat``, or None for the learned table.
        """
        if self.rope is None:
            return None
        pos = grid_positions(grid, grid, device=device)  # (T, 2)
        if mode == "interpolate" and grid != self.grid:
            pos = pos * (self.grid - 1) / (grid - 1)
        if self.variant == "rope-1d-flat":
            width = grid if mode == "extrapolate" else self.grid
            return pos[:, 0] * width + pos[:, 1]
        return pos

    def forward(self, patches: torch.Tensor, *, mode: Mode = "extrapolate") -> torch.Tensor:
        """Class logits of a batch of patch sequences.

        Args:
            patches: ``(B, T, PATCH²)`` with ``T`` a square grid.
            mode: how positions beyond the trained grid are made (see :meth:`positions`).

        Returns:
            ``(B, 10)`` logits.
        """
        grid = math.isqrt(patches.shape[1])
        x = self.embed(patches)  # (B, T, dim)
        if self.table is not None:
            table = (
                self.table
                if grid == self.grid
                else F.interpolate(self.table, size=(grid, grid), mode="bicubic", align_corners=False)
            )
            x = x + table.flatten(2).transpose(1, 2)
        positions = self.positions(grid, mode=mode, device=patches.device)
        for block in self.blocks:
            x = block(x, positions)
        return self.head(self.norm(x).mean(dim=1))


def _accuracy(model: TinyViT, patches: torch.Tensor, labels: torch.Tensor, mode: Mode) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(patches, mode=mode).argmax(-1) == labels).float().mean())


def train_and_evaluate(
    variant: Variant,
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
    on_epoch: Callable[[], None] | None = None,
    sizes: tuple[int, int] = (TRAIN_SIZE, TEST_SIZE),
) -> ViTResult:
    """Train one variant with a fixed seed and return its accuracies.

    Args:
        variant: the position encoding, one of :data:`VARIANTS`.
        seed: the seed of the initialisation and the batch order.
        epochs: passes over the training digits.
        batch_size: images per step.
        lr: AdamW's peak learning rate (one-cycle schedule).
        on_epoch: called after each epoch (progress).
        sizes: the image side at training and at the larger test resolution (multiples of
            ``PATCH``, the second larger); the default 16 → 24 is an 8×8 → 12×12 token grid.

    Returns:
        The :class:`ViTResult`.
    """
    train_size, test_size = sizes
    if train_size % PATCH or test_size % PATCH or not 0 < train_size < test_size:
        raise ValueError(f"sizes={sizes!r}: need two multiples of {PATCH} with train < test")
    start = time.perf_counter()
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    train_patches, test_small, test_large = (
        _patches(x_train, train_size),
        _patches(x_test, train_size),
        _patches(x_test, test_size),
    )
    model = TinyViT(variant, grid=train_size // PATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(y_train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            loss = F.cross_entropy(model(train_patches[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch()
    return ViTResult(
        variant=variant,
        seed=seed,
        train_resolution=_accuracy(model, test_small, y_test, "extrapolate"),
        extrapolate=None if model.rope is None else _accuracy(model, test_large, y_test, "extrapolate"),
        interpolate=_accuracy(model, test_large, y_test, "interpolate"),
        seconds=time.perf_counter() - start,
    )


def run_experiment(
    *,
    seeds: tuple[int, ...] = (0,),
    epochs: int = 30,
    on_epoch: Callable[[], None] | None = None,
    sizes: tuple[int, int] = (TRAIN_SIZE, TEST_SIZE),
) -> list[ViTResult]:
    """Every variant for every seed.

    Args:
        seeds: training seeds.
        epochs, on_epoch, sizes: as in :func:`train_and_evaluate`.

    Returns:
        One :class:`ViTResult` per seed and variant.
    """
    return [
        train_and_evaluate(v, seed=s, epochs=epochs, on_epoch=on_epoch, sizes=sizes) for s in seeds for v in VARIANTS
    ]


def summarize(results: list[ViTResult]) -> dict[str, dict[str, float | None]]:
    """Mean accuracy per variant and setting.

    Args:
        results: from :func:`run_experiment`.

    Returns:
        variant → ``{"train_resolution", "extrapolate", "interpolate"}`` → mean accuracy (None for the
        learned table's extrapolation).
    """
    table: dict[str, dict[str, float | None]] = {}
    for variant in VARIANTS:
        rows = [r for r in results if r.variant == variant]
        if not rows:
            continue
        table[variant] = {
            "train_resolution": float(np.mean([r.train_resolution for r in rows])),
            "extrapolate": None if rows[0].extrapolate is None else float(np.mean([r.extrapolate for r in rows])),
            "interpolate": float(np.mean([r.interpolate for r in rows])),
        }
    return table
