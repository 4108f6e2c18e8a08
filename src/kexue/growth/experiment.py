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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kexue.charlm import CharCorpus, TrainLog, evaluate, flops_per_token
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


@dataclass(frozen=True)
class Settings:
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
    shape: str  # "width" or "depth": which large model it becomes
    at_step: int
    grow: Callable[[nn.Module], nn.Module]
    function_preserving: bool


@dataclass
class GrowthRun:
    recipe: Recipe
    grown: TrainLog  # from step 0 (the small phase included)
    scratch: TrainLog
    saved: float | None
    target: float


def stack_layers(model: nn.Module) -> nn.Module:
    """The G_stack-style baseline: twice the layers, layer ``L + i`` a copy of trained layer ``i``.
    Not function-preserving (each copy reads what the layers below it now produce)."""
    layers = list(range(model.config.num_hidden_layers))
    return relayered(model, [(i, False) for i in layers + layers])


def recipes(s: Settings) -> list[Recipe]:
    """The recipes of the module docstring for settings ``s``."""
    return [
        Recipe("width", "width", s.small_steps, lambda m: widen(m, 2, noise=s.noise, seed=s.seed), True),
        Recipe(
            "width early", "width", max(1, s.small_steps // 2), lambda m: widen(m, 2, noise=s.noise, seed=s.seed), True
        ),
        Recipe("depth", "depth", s.small_steps, lambda m: deepen(m, range(m.config.num_hidden_layers)), True),
        Recipe("stack (G_stack-style)", "depth", s.small_steps, stack_layers, False),
    ]


def _config(vocab: int, s: Settings, hidden: int, layers: int, heads: int):
    from transformers import LlamaConfig

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

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            for row in self.corpus.batch(self.s.batch_size, self.s.context, generator):
                yield {"input_ids": row, "labels": row}


def _curve_callback(corpus: CharCorpus, s: Settings, log: TrainLog, on_step: Callable[[], None] | None):
    """A TrainerCallback recording validation loss against FLOPs (each step's FLOPs from the
    model that takes the step, so a growth changes the rate from the next step on)."""
    from transformers import TrainerCallback

    tokens = s.batch_size * s.context

    class Curve(TrainerCallback):
        flops = 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            log.add(0, 0.0, evaluate(model, corpus, s.context, s.eval_windows))

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.flops += tokens * flops_per_token(model.config, s.context)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if on_step is not None:
                on_step()
            if state.global_step % s.eval_every == 0 or state.global_step == state.max_steps:
                log.add(state.global_step, self.flops, evaluate(model, corpus, s.context, s.eval_windows))

    return Curve()


def train_run(
    model: nn.Module,
    corpus: CharCorpus,
    s: Settings,
    steps: int,
    seed: int,
    growth: GrowthCallback | None = None,
    on_step: Callable[[], None] | None = None,
) -> TrainLog:
    """One ``Trainer.train()`` run of ``steps`` steps (with ``growth`` when given): the curve."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

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
        callbacks = ([growth] if growth is not None else []) + [_curve_callback(corpus, s, log, on_step)]
        trainer = Trainer(model=model, args=args, train_dataset=_Windows(corpus, s, seed), callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return log


def total_steps(s: Settings) -> int:
    """Optimizer steps of :func:`run_experiment` (for a progress bar)."""
    return 2 * s.large_steps + sum(r.at_step + s.large_steps for r in recipes(s))


def run_experiment(corpus: CharCorpus, s: Settings, on_step: Callable[[], None] | None = None) -> list[GrowthRun]:
    """Run every recipe of :func:`recipes` and the two scratch baselines; one result per recipe."""
    from transformers import LlamaForCausalLM

    shapes = {"width": (2 * s.hidden, s.layers, 2 * s.heads), "depth": (s.hidden, 2 * s.layers, s.heads)}
    scratch = {}
    for name, shape in shapes.items():
        torch.manual_seed(s.seed + 1)
        scratch[name] = train_run(
            LlamaForCausalLM(_config(corpus.vocab_size, s, *shape)), corpus, s, s.large_steps, s.seed, on_step=on_step
        )
    runs = []
    for recipe in recipes(s):
        torch.manual_seed(s.seed)
        small = LlamaForCausalLM(_config(corpus.vocab_size, s, s.hidden, s.layers, s.heads))
        growth = GrowthCallback(recipe.grow, recipe.at_step, lr_scale=s.grown_lr / s.lr)
        grown = train_run(small, corpus, s, recipe.at_step + s.large_steps, s.seed, growth, on_step)
        target = scratch[recipe.shape].val_loss[-1]
        reach = flops_to_reach(grown, target)
        runs.append(
            GrowthRun(
                recipe,
                grown,
                scratch[recipe.shape],
                None if reach is None else 1 - reach / scratch[recipe.shape].flops[-1],
                target,
            )
        )
    return runs
