"""Training with Mitchell products: exact vs Mitchell vs corrected Mitchell, same seeds.

* digits (scikit-learn, 8×8 images, 1,347 train / 450 test, stratified): an MLP (64-128-64-10)
  and a small CNN (two 3×3 convolutions, 16 and 32 channels, then a linear layer), Adam,
  cross-entropy; the test accuracy after the last epoch.
* tinyshakespeare: a character-level LLaMA-style model whose linear layers (attention
  projections, SwiGLU, output head) are Mitchell layers; attention's own score and value
  products stay exact. Validation loss after training.

Every variant starts from the same initial weights and sees the same batches; only the
arithmetic of the swapped layers differs (``backward="mitchell"``: the paper's setting, every
product of training approximate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kexue.mitchell.nn import mitchellize

__all__ = ["VARIANTS", "char_lm", "digits", "digits_data"]

VARIANTS = {"exact": None, "mitchell": "plain", "mitchell+piecewise": "piecewise"}


@dataclass
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_data(seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=450, random_state=seed, stratify=y)
    t = torch.from_numpy
    return DigitsData(t(xtr), t(ytr).long(), t(xte), t(yte).long())


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10))


def _variant(model: nn.Module, variant: str) -> nn.Module:
    kind = VARIANTS[variant]
    if kind is None:
        return model
    return mitchellize(model, backward="mitchell", correction=None if kind == "plain" else kind)


def digits(arch: str, variant: str, data: DigitsData, *, epochs: int, seed: int = 0,
           on_epoch: Callable[[], None] | None = None) -> dict[str, float | list[float]]:
    """Train ``arch`` (``"mlp"`` or ``"cnn"``) with ``variant`` arithmetic; test accuracy (%)."""
    torch.manual_seed(seed)
    model = _variant({"mlp": _mlp, "cnn": _cnn}[arch](), variant)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(data.y_train), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{arch}/{variant}: loss {float(loss)}")
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            curve.append(float((model(data.x_test).argmax(1) == data.y_test).float().mean() * 100))
        if on_epoch is not None:
            on_epoch()
    return {"accuracy": curve[-1], "curve": curve}


def char_lm(variant: str, *, steps: int, seed: int = 0, on_step: Callable[[], None] | None = None,
            hidden: int = 64, layers: int = 2, context: int = 64, batch_size: int = 16, warmup: int = 20, evals: int = 5) -> dict[str, float | list[float]]:
    """Train the char-level model with ``variant`` arithmetic; final validation loss (nats/char).

    The learning rate 3e-3 is reached linearly over the first ``warmup`` steps; the validation
    loss is measured ``evals`` times (plus once before training) for the curve."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kexue.charlm import CharCorpus, TrainLog, train_steps
    from kexue.data import load_tinyshakespeare

    corpus = CharCorpus(load_tinyshakespeare())
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=corpus.vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=context, tie_word_embeddings=False)
    model = _variant(LlamaForCausalLM(config), variant)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0)
    log = train_steps(model, corpus, opt, steps=steps, batch_size=batch_size, context=context,
                      generator=torch.Generator().manual_seed(seed), eval_every=max(1, steps // max(1, evals)), log=TrainLog(),
                      lr_at=lambda s: 3e-3 * min(1.0, s / max(1, warmup)), on_step=on_step)
    return {"val_loss": log.val_loss[-1], "curve": log.val_loss}
