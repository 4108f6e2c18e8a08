"""Training with Mitchell products: exact vs Mitchell vs corrected Mitchell, same seeds.

* digits (scikit-learn, 8×8 images, 1,347 train / 450 test, stratified): an MLP (64-128-64-10)
  and a small CNN (two 3×3 convolutions, 16 and 32 channels, then a linear layer), Adam,
  cross-entropy; the test accuracy after the last epoch.
* tinyshakespeare: a character-level LLaMA-style Transformer (HF ``LlamaForCausalLM``) trained
  with (a) exact arithmetic, (b) Mitchell products in every linear layer (attention projections,
  SwiGLU, output head), (c) also in attention (``Q Kᵀ``, the softmax's exponentials by
  ``kexue.mitchell.exp2``, ``P V``), (d) (c) with an error correction; ``--full`` adds "everything":
  (d) plus the RMS norms' products and the SwiGLU gate product. Validation loss after training,
  and the per-part error of the trained model on one batch.

Every variant starts from the same initial weights and sees the same batches; only the
arithmetic of the swapped layers differs (``backward="mitchell"``: the paper's setting, every
product of training approximate).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, get_args

import numpy as np
import torch
from torch import nn

from kexue._shared import check_choice
from kexue.charlm import CharCorpus, train_steps
from kexue.data import load_tinyshakespeare
from kexue.mitchell.correction import Correction
from kexue.mitchell.nn import mitchellize, track_errors

__all__ = [
    "FULL_ONLY_VARIANTS",
    "TRANSFORMER_VARIANTS",
    "VARIANTS",
    "Arch",
    "CharTransformerResult",
    "DigitsData",
    "DigitsResult",
    "DigitsVariant",
    "LayerErrors",
    "TransformerVariant",
    "char_transformer",
    "digits",
    "digits_data",
    "layer_errors",
    "part_kind",
    "transformer_switches",
]

DigitsVariant = Literal["exact", "mitchell", "mitchell+piecewise"]
VARIANTS: dict[DigitsVariant, Literal["plain", "piecewise"] | None] = {
    "exact": None,
    "mitchell": "plain",
    "mitchell+piecewise": "piecewise",
}
Arch = Literal["mlp", "cnn"]
TransformerVariant = Literal["exact", "linears", "linears+attention", "linears+attention+correction", "everything"]


class DigitsResult(TypedDict):
    """What :func:`digits` returns: the final test accuracy (%) and the accuracy after each epoch."""

    accuracy: float
    curve: list[float]


class CharTransformerResult(TypedDict):
    """What :func:`char_transformer` returns (``errors`` with ``track=True`` only)."""

    val_loss: float
    curve: list[float]
    errors: NotRequired[LayerErrors]


class LayerErrors(TypedDict):
    """What :func:`layer_errors` returns."""

    parts: dict[str, float]
    logits_error: float
    loss: float
    loss_exact_arithmetic: float


@dataclass(kw_only=True)
class DigitsData:
    """The digits split: 1,347 training and 450 test images (flattened 8 × 8, in [0, 1]) with labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_data(seed: int = 0) -> DigitsData:
    """scikit-learn's digits, split stratified into 1,347 training and 450 test images.

    Args:
        seed: the split's random state.

    Returns:
        The split as float32 images and int64 labels.
    """
    from sklearn.datasets import load_digits  # optional extra: sklearn
    from sklearn.model_selection import train_test_split  # optional extra: sklearn

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=450, random_state=seed, stratify=y)
    t = torch.from_numpy
    return DigitsData(x_train=t(xtr), y_train=t(ytr).long(), x_test=t(xte), y_test=t(yte).long())


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 16, 10),
    )


def _variant(model: nn.Module, variant: DigitsVariant) -> nn.Module:
    kind = VARIANTS[variant]
    if kind is None:
        return model
    return mitchellize(model, backward="mitchell", correction=None if kind == "plain" else kind)


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, data: DigitsData, g: torch.Generator, what: str) -> float:
    """One epoch of Adam in batches of 64 (shuffled by ``g``); the test accuracy (%) after it."""
    model.train()
    for idx in torch.randperm(len(data.y_train), generator=g).split(64):
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{what}: loss {float(loss)}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(data.x_test).argmax(1) == data.y_test).float().mean() * 100)


def digits(
    arch: Arch,
    variant: DigitsVariant,
    data: DigitsData,
    *,
    epochs: int,
    seed: int = 0,
    on_epoch: Callable[[], None] | None = None,
) -> DigitsResult:
    """Train ``arch`` with ``variant`` arithmetic; test accuracy (%).

    Args:
        arch: ``"mlp"`` or ``"cnn"``.
        variant: ``"exact"``, ``"mitchell"`` or ``"mitchell+piecewise"``.
        data: the split (:func:`digits_data`).
        epochs: passes over the training set.
        seed: the initial weights' and the batches' seed.
        on_epoch: called after each epoch (progress).

    Returns:
        The final accuracy and the accuracy after each epoch.
    """
    torch.manual_seed(seed)
    model = _variant({"mlp": _mlp, "cnn": _cnn}[arch](), variant)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        curve.append(_epoch(model, opt, data, g, f"{arch}/{variant}"))
        if on_epoch is not None:
            on_epoch()
    return {"accuracy": curve[-1], "curve": curve}


TRANSFORMER_VARIANTS: tuple[TransformerVariant, ...] = get_args(TransformerVariant)[:4]
FULL_ONLY_VARIANTS: tuple[TransformerVariant, ...] = get_args(TransformerVariant)[4:]  # (d) + norms + gate: --full


def transformer_switches(variant: TransformerVariant, correction: Correction | None) -> dict[str, Any] | None:
    """``mitchellize`` keywords of a char-Transformer variant (None: exact arithmetic).

    Args:
        variant: one of :data:`TRANSFORMER_VARIANTS` or :data:`FULL_ONLY_VARIANTS`.
        correction: the correction of the variants that take one.

    Returns:
        The keywords, or None for exact arithmetic.
    """
    check_choice("variant", variant, TRANSFORMER_VARIANTS + FULL_ONLY_VARIANTS)
    return {
        "exact": None,
        "linears": {},
        "linears+attention": {"attention": True},
        "linears+attention+correction": {"attention": True, "correction": correction},
        "everything": {"attention": True, "norms": True, "gates": True, "correction": correction},
    }[variant]


@functools.lru_cache(maxsize=1)
def _corpus() -> CharCorpus:
    return CharCorpus(load_tinyshakespeare())


def _llama(vocab: int, hidden: int, layers: int, context: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM  # optional extra: nlp

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=context,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def layer_errors(model: nn.Module, exact_twin: nn.Module, window: torch.Tensor) -> LayerErrors:
    """Per-part local errors (:func:`~kexue.mitchell.nn.track_errors`) of ``model`` on one batch,
    and the end-to-end effect: relative error of the logits against ``exact_twin`` (the same
    weights, exact arithmetic) and the two losses.

    Args:
        model: a mitchellized causal LM (HF: called with ``input_ids``, returns ``.logits``).
        exact_twin: the same weights with exact arithmetic.
        window: ``(batch, T + 1)`` token ids: inputs and next-token targets.

    Returns:
        The per-part errors, the logits' relative error and both losses.
    """
    model.eval()
    with torch.no_grad(), track_errors(model) as errors:
        logits = model(input_ids=window[:, :-1]).logits
    with torch.no_grad():
        exact = exact_twin(input_ids=window[:, :-1]).logits
        target = window[:, 1:].flatten()
        loss = float(nn.functional.cross_entropy(logits.flatten(0, 1), target))
        loss_exact = float(nn.functional.cross_entropy(exact.flatten(0, 1), target))
    return {
        "parts": {name: v[0] for name, v in errors.items()},
        "logits_error": float((logits - exact).norm() / exact.norm()),
        "loss": loss,
        "loss_exact_arithmetic": loss_exact,
    }


def char_transformer(
    variant: TransformerVariant,
    *,
    steps: int,
    seed: int = 0,
    correction: Correction | None = "piecewise",
    hidden: int = 64,
    layers: int = 2,
    context: int = 64,
    batch_size: int = 16,
    warmup: int = 20,
    evals: int = 5,
    eval_windows: int = 256,
    track: bool = False,
    on_step: Callable[[], None] | None = None,
) -> CharTransformerResult:
    """Train the tinyshakespeare char Transformer (LLaMA-style, HF ``LlamaForCausalLM``) with the
    arithmetic of ``variant`` (:data:`TRANSFORMER_VARIANTS`); validation loss (nats/char).

    Same seed, initial weights and batches for every variant; AdamW, learning rate 3e-3 reached
    linearly over ``warmup`` steps; ``backward="mitchell"`` (gradient products approximate too).
    The validation loss is :func:`kexue.charlm.evaluate` on ``eval_windows`` fixed windows,
    ``evals`` times (plus once before training when ``evals > 1``). With ``track``, the result
    also has :func:`layer_errors` of the trained model on the first 16 validation windows.

    Args:
        variant: the arithmetic (:data:`TRANSFORMER_VARIANTS`, :data:`FULL_ONLY_VARIANTS`).
        steps: training steps.
        seed: the initial weights' and the batches' seed.
        correction: the correction of the variants that take one.
        hidden: the model width.
        layers: decoder layers.
        context: the training window (tokens).
        batch_size: windows per step.
        warmup: steps of linear learning-rate warm-up.
        evals: validation evaluations during training.
        eval_windows: fixed validation windows per evaluation.
        track: also measure :func:`layer_errors` of the trained model.
        on_step: called after each step (progress).

    Returns:
        The final validation loss, the loss curve and (with ``track``) the per-part errors.
    """
    corpus = _corpus()
    switches = transformer_switches(variant, correction)
    torch.manual_seed(seed)
    model = _llama(corpus.vocab_size, hidden, layers, context)
    if switches is not None:
        mitchellize(model, backward="mitchell", **switches)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0)
    log = train_steps(
        model,
        corpus,
        opt,
        steps=steps,
        batch_size=batch_size,
        context=context,
        generator=torch.Generator().manual_seed(seed),
        eval_every=max(1, steps // max(1, evals)),
        lr_at=lambda step: 3e-3 * min(1.0, step / max(1, warmup)),
        on_step=on_step,
        eval_windows=eval_windows,
        eval_at_start=evals > 1,
    )
    curve = log.val_loss
    out: CharTransformerResult = {"val_loss": curve[-1], "curve": curve}
    if track and switches is not None:
        twin = _llama(corpus.vocab_size, hidden, layers, context)
        twin.load_state_dict(model.state_dict())
        window = corpus.val[: 16 * (context + 1)].reshape(16, context + 1)
        out["errors"] = layer_errors(model, twin, window)
    return out


def part_kind(name: str) -> str:
    """The kind of a tracked part, from its name: ``q_proj``, ``attention core``, ``lm_head``, …"""
    last = name.rsplit(".", 1)[-1]
    return {"core": "attention core (QKᵀ, softmax, PV)", "gate": "MLP gate product"}.get(last, last)
