"""Does growth save compute? Small-then-grown against large-from-scratch on tinyshakespeare.

Protocol (one seed, all runs on the same character-level LLaMA-style models):

1. the small model (hidden ``d``, ``L`` layers) trains ``small_steps`` steps;
2. it is grown losslessly, (a) to ``2d`` by :func:`~kexue.growth.widen` (heads copied,
   zero-sum symmetry-breaking noise) and (b) to ``2L`` layers by
   :func:`~kexue.growth.depth.deepen`; Adam's state is carried over
   (:func:`~kexue.growth.optim.transfer_adam_state`) and each grown model trains
   ``large_steps`` more steps;
3. each large shape also trains ``large_steps`` steps from scratch.

Every run uses AdamW, linear warm-up then a constant learning rate (the grown models continue
at ``grown_lr``, without a second warm-up), the same batch size and context. The validation
loss is measured on fixed windows every ``eval_every`` steps. FLOPs saved = ``1 − F/F₀`` with
``F₀`` the scratch run's total FLOPs and ``F`` the FLOPs (small phase included) at which the
grown run first reaches the scratch run's final validation loss (linear interpolation between
evaluations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kexue.charlm import CharCorpus, TrainLog, train_steps
from kexue.growth.depth import deepen
from kexue.growth.optim import transfer_adam_state
from kexue.growth.widen import widen

__all__ = ["GrowthRun", "Settings", "flops_to_reach", "run_experiment"]


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
    seed: int = 0


@dataclass
class GrowthRun:
    operator: str
    small: TrainLog
    grown: TrainLog
    scratch: TrainLog
    saved: float | None
    target: float


def _config(vocab: int, s: Settings, hidden: int, layers: int, heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=s.context, tie_word_embeddings=False)


def flops_to_reach(log: TrainLog, target: float) -> float | None:
    """FLOPs at which ``log``'s validation loss first reaches ``target`` (interpolated), or None."""
    for i, loss in enumerate(log.val_loss):
        if loss <= target:
            if i == 0:
                return log.flops[0]
            f0, f1, l0, l1 = log.flops[i - 1], log.flops[i], log.val_loss[i - 1], loss
            return f0 + (f1 - f0) * (l0 - target) / (l0 - l1)
    return None


def run_experiment(corpus: CharCorpus, s: Settings, on_step: Callable[[], None] | None = None) -> list[GrowthRun]:
    """Run the protocol of the module docstring for width and depth growth."""
    from transformers import LlamaForCausalLM

    def optimizer(model, lr):
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)

    def schedule(lr):
        return lambda step: lr * min(1.0, step / s.warmup)

    def train(model, opt, steps, lr, log=None, flops=0.0, step0=0, seed=0):
        return train_steps(model, corpus, opt, steps=steps, batch_size=s.batch_size, context=s.context,
                           generator=torch.Generator().manual_seed(seed), eval_every=s.eval_every, log=log,
                           flops_offset=flops, step_offset=step0, lr_at=schedule(lr), on_step=on_step)

    torch.manual_seed(s.seed)
    small = LlamaForCausalLM(_config(corpus.vocab_size, s, s.hidden, s.layers, s.heads))
    small_opt = optimizer(small, s.lr)
    small_log = train(small, small_opt, s.small_steps, s.lr, seed=s.seed)
    operators = {
        "width": ((2 * s.hidden, s.layers, 2 * s.heads), lambda m: widen(m, 2), lambda m: widen(m, 2, noise=s.noise, seed=s.seed)),
        "depth": ((s.hidden, 2 * s.layers, s.heads), lambda m: deepen(m, range(s.layers)), lambda m: deepen(m, range(s.layers))),
    }
    runs = []
    for name, (shape, exact_op, op) in operators.items():
        torch.manual_seed(s.seed + 1)
        scratch = LlamaForCausalLM(_config(corpus.vocab_size, s, *shape))
        scratch_log = train(scratch, optimizer(scratch, s.lr), s.large_steps, s.lr, seed=s.seed + 1)
        grown = op(small)
        grown_opt = optimizer(grown, s.grown_lr)
        transfer_adam_state(small_opt, small, grown_opt, grown, exact_op)
        grown_log = TrainLog()
        grown_log.add(s.small_steps, small_log.flops[-1], small_log.val_loss[-1])
        grown_log = train(grown, grown_opt, s.large_steps, s.grown_lr, log=grown_log, flops=small_log.flops[-1],
                          step0=s.small_steps, seed=s.seed + 1)
        grown_log.steps = [step - s.small_steps for step in grown_log.steps]
        target = scratch_log.val_loss[-1]
        reach = flops_to_reach(grown_log, target)
        runs.append(GrowthRun(name, small_log, grown_log, scratch_log,
                              None if reach is None else 1 - reach / scratch_log.flops[-1], target))
    return runs
