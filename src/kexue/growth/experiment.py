"""Does growth save compute? Recipes of small-then-grown against large-from-scratch, on tinyshakespeare.

Every run is one ``transformers.Trainer.train()`` call on character-level LLaMA-style models,
the code a user would run: the grown runs carry a :class:`~kexue.growth.callback.GrowthCallback`
that grows the model at a step, with Adam's state and the learning-rate schedule carried over.

Recipes (the small model: hidden ``d``, ``L`` layers; all grown ``× 2`` in one dimension):

============  =================================================================  ====================
recipe        growth                                                              function-preserving
============  =================================================================  ====================
width         :func:`~kexue.growth.widen` to ``2d`` (heads copied, zero-sum        yes
              noise) after ``small_steps``
width early   the same after ``small_steps // 2``                                  yes
depth         :func:`~kexue.growth.deepen`: an identity block after every layer    yes
stack         the trained layers stacked (layer ``L + i`` copies layer ``i``,      no (a baseline, as
              G_stack-style, Du et al. 2024)                                       in G_stack)
============  =================================================================  ====================

The stacking baseline carries Adam's moments through its gather map like the others (each
copy of a layer starts from its source's moments, ``m/2`` and ``v/4``): at a stacked point that is a
heuristic, not the gradient identity of the function-preserving recipes.

Each large shape (``2d × L`` and ``d × 2L``) also trains ``large_steps`` steps from scratch;
each grown run trains ``large_steps`` steps after its growth. Every run uses AdamW (β₂ 0.99,
no weight decay), a linear warm-up then a constant rate (``lr``; from the growth on the grown
model uses ``grown_lr``, without a second warm-up), the same batch size and context, the same
data stream per seed. Validation loss is measured on fixed windows every ``eval_every`` steps.
FLOPs saved = ``1 − F/F₀``: ``F₀`` the scratch run's total FLOPs, ``F`` the FLOPs (small phase
included) at which the grown run first reaches the scratch run's final validation loss (linear
interpolation between evaluations).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from kexue.charlm import CharCorpus, TrainLog, evaluate, flops_per_token
from kexue.growth._build import hf_config
from kexue.growth.callback import GrowthCallback
from kexue.growth.depth import deepen, relayered
from kexue.growth.widen import widen

__all__ = [
    "PUBLISHED",
    "GrowthRun",
    "Recipe",
    "Settings",
    "flops_to_reach",
    "recipes",
    "run_experiment",
    "stack_layers",
]

# FLOPs (or compute) saved as published, for the report beside ours
PUBLISHED = {
    "Staged Training (Shen et al. 2022)": 0.22,
    "bert2BERT (Chen et al. 2022)": 0.45,
    "LiGO (Wang et al. 2023)": 0.50,
    "G_stack (Du et al. 2024)": 0.546,
}


# which large model a recipe grows into: twice the width, or twice the depth
Shape = Literal["width", "depth"]


@dataclass(frozen=True)
class Settings:
    """The experiment's settings (the defaults: ``kexue reproduce growth --full``).

    Args:
        hidden: the small model's hidden size.
        layers: its number of layers.
        heads: its number of attention heads.
        context: characters per training window.
        batch_size: windows per step.
        small_steps: steps before the (later) growth.
        large_steps: steps after a growth, and of each scratch run.
        lr: AdamW's learning rate.
        grown_lr: the rate from the growth on.
        warmup: linear warm-up steps.
        noise: the width recipes' symmetry-breaking noise.
        eval_every: steps between validation evaluations.
        eval_windows: validation windows per evaluation.
        seed: seed of the weights, the data stream and the noise.
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 64
    batch_size: int = 32
    small_steps: int = 600
    large_steps: int = 1500
    lr: float = 3e-3
    grown_lr: float = 2e-3
    warmup: int = 50
    noise: float = 1.0
    eval_every: int = 100
    eval_windows: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Recipe:
    """A growth recipe: ``grow`` applied after step ``at_step``, compared with the scratch run of ``shape``."""

    name: str
    shape: Shape  # which large model it becomes
    at_step: int
    grow: Callable[[nn.Module], nn.Module]
    function_preserving: bool


@dataclass
class GrowthRun:
    """One recipe's result: its curve, the scratch run's, the FLOPs saved (None: the target was
    not reached) and the target (the scratch run's final validation loss)."""

    recipe: Recipe
    grown: TrainLog  # from step 0 (the small phase included)
    scratch: TrainLog
    saved: float | None
    target: float


def stack_layers(model: nn.Module) -> nn.Module:
    """The G_stack-style baseline: twice the layers, layer ``L + i`` a copy of trained layer ``i``.
    Not function-preserving (each copy reads what the layers below it now produce)."""
    layers = list(range(hf_config(model).num_hidden_layers))
    return relayered(model, [(i, False) for i in layers + layers])


def recipes(s: Settings) -> list[Recipe]:
    """The recipes of the module docstring for settings ``s``."""

    def wider(m: nn.Module) -> nn.Module:
        return widen(m, 2, noise=s.noise, seed=s.seed)

    def deeper(m: nn.Module) -> nn.Module:
        return deepen(m, range(hf_config(m).num_hidden_layers))

    return [
        Recipe(name="width", shape="width", at_step=s.small_steps, grow=wider, function_preserving=True),
        Recipe(
            name="width early",
            shape="width",
            at_step=max(1, s.small_steps // 2),
            grow=wider,
            function_preserving=True,
        ),
        Recipe(name="depth", shape="depth", at_step=s.small_steps, grow=deeper, function_preserving=True),
        Recipe(
            name="stack (G_stack-style)",
            shape="depth",
            at_step=s.small_steps,
            grow=stack_layers,
            function_preserving=False,
        ),
    ]


def _config(vocab: int, s: Settings, hidden: int, layers: int, heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=s.context,
        tie_word_embeddings=False,
    )


def flops_to_reach(log: TrainLog, target: float) -> float | None:
    """FLOPs at which ``log``'s validation loss first reaches ``target`` (interpolated), or None."""
    for i, loss in enumerate(log.val_loss):
        if loss <= target:
            if i == 0:
                return log.flops[0]
            f0, f1, l0, l1 = log.flops[i - 1], log.flops[i], log.val_loss[i - 1], loss
            return f0 + (f1 - f0) * (l0 - target) / (l0 - l1)
    return None


class _Windows(torch.utils.data.IterableDataset):
    """Random training windows of the corpus, one seeded stream (``input_ids`` = ``labels``: the
    model shifts them, so ``context`` characters are predicted per window)."""

    def __init__(self, corpus: CharCorpus, s: Settings, seed: int) -> None:
        self.corpus, self.s, self.seed = corpus, s, seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            for row in self.corpus.batch(self.s.batch_size, self.s.context, generator):
                yield {"input_ids": row, "labels": row}


class _Curve(TrainerCallback):
    """A TrainerCallback recording validation loss against FLOPs (each step's FLOPs from the
    model that takes the step, so a growth changes the rate from the next step on)."""

    def __init__(self, corpus: CharCorpus, s: Settings, log: TrainLog, on_step: Callable[[], None] | None) -> None:
        self.corpus, self.s, self.log, self.on_step = corpus, s, log, on_step
        self.tokens = s.batch_size * s.context
        self.flops = 0.0

    def _evaluate(self, model: nn.Module) -> float:
        return evaluate(model, self.corpus, context=self.s.context, windows=self.s.eval_windows)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None:
            self.log.add(0, 0.0, self._evaluate(model))

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None:
            self.flops += self.tokens * flops_per_token(hf_config(model), context=self.s.context)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if self.on_step is not None:
            self.on_step()
        if model is not None and (state.global_step % self.s.eval_every == 0 or state.global_step == state.max_steps):
            self.log.add(state.global_step, self.flops, self._evaluate(model))


def train_run(
    model: nn.Module,
    corpus: CharCorpus,
    s: Settings,
    *,
    steps: int,
    seed: int,
    growth: GrowthCallback | None = None,
    on_step: Callable[[], None] | None = None,
) -> TrainLog:
    """One ``Trainer.train()`` run of ``steps`` steps (with ``growth`` when given): the curve.

    Args:
        model: the model to train (a LLaMA-style causal LM).
        corpus: the characters.
        s: the settings (batch, context, rates, evaluation).
        steps: optimizer steps.
        seed: the Trainer's and the data stream's seed.
        growth: a :class:`~kexue.growth.callback.GrowthCallback`, or None.
        on_step: called after every step (a progress bar).

    Returns:
        The validation curve.
    """
    log = TrainLog()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=s.batch_size,
            learning_rate=s.lr,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=s.warmup,
            adam_beta2=0.99,
            weight_decay=0.0,
            max_grad_norm=0.0,
            optim="adamw_torch",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            seed=seed,
            dataloader_num_workers=0,
        )
        callbacks: list[TrainerCallback] = [growth] if growth is not None else []
        callbacks.append(_Curve(corpus, s, log, on_step))
        trainer = Trainer(model=model, args=args, train_dataset=_Windows(corpus, s, seed), callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return log


def total_steps(s: Settings) -> int:
    """Optimizer steps of :func:`run_experiment` (for a progress bar)."""
    return 2 * s.large_steps + sum(r.at_step + s.large_steps for r in recipes(s))


def run_experiment(corpus: CharCorpus, s: Settings, *, on_step: Callable[[], None] | None = None) -> list[GrowthRun]:
    """Run every recipe of :func:`recipes` and the two scratch baselines; one result per recipe.

    Args:
        corpus: the characters (tinyshakespeare in the claims).
        s: the settings.
        on_step: called after every optimizer step of every run (a progress bar).

    Returns:
        One :class:`GrowthRun` per recipe.
    """
    scratch = _scratch_runs(corpus, s, on_step)
    runs = []
    for recipe in recipes(s):
        torch.manual_seed(s.seed)
        small = LlamaForCausalLM(_config(corpus.vocab_size, s, s.hidden, s.layers, s.heads))
        growth = GrowthCallback(recipe.grow, recipe.at_step, lr_scale=s.grown_lr / s.lr)
        grown = train_run(
            small, corpus, s, steps=recipe.at_step + s.large_steps, seed=s.seed, growth=growth, on_step=on_step
        )
        target = scratch[recipe.shape].val_loss[-1]
        reach = flops_to_reach(grown, target)
        runs.append(
            GrowthRun(
                recipe=recipe,
                grown=grown,
                scratch=scratch[recipe.shape],
                saved=None if reach is None else 1 - reach / scratch[recipe.shape].flops[-1],
                target=target,
            )
        )
    return runs


def _scratch_runs(corpus: CharCorpus, s: Settings, on_step: Callable[[], None] | None) -> dict[Shape, TrainLog]:
    """The two large models (twice the width, twice the depth) trained from scratch."""
    shapes: dict[Shape, tuple[int, int, int]] = {
        "width": (2 * s.hidden, s.layers, 2 * s.heads),
        "depth": (s.hidden, 2 * s.layers, s.heads),
    }
    scratch: dict[Shape, TrainLog] = {}
    for name, shape in shapes.items():
        torch.manual_seed(s.seed + 1)
        model = LlamaForCausalLM(_config(corpus.vocab_size, s, *shape))
        scratch[name] = train_run(model, corpus, s, steps=s.large_steps, seed=s.seed, on_step=on_step)
    return scratch
