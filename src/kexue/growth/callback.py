"""Staged training inside one ``transformers.Trainer.train()`` run: grow the model at a step.

:class:`GrowthCallback` grows the model after optimizer step ``at_step`` and training goes on
in the same run, as if the large model had been there from the start:

* **the model** is grown by any operator of :mod:`kexue.growth` (or a composition), then
  moved *into the object the Trainer holds*: its submodules, parameters, buffers and config are
  replaced, so every reference the Trainer, accelerate and other callbacks keep stays valid;
* **the optimizer** keeps its parameter groups (weight decay or not, per-group settings): each
  new parameter joins the group of the old parameter with the same name (layer indices aside:
  inserted layers join their role's group). Adam/AdamW moments go through the same maps as
  the weights (:func:`~kexue.growth.transfer_adam_state`: ``m̃ = m / (n a)``, ``ṽ = v / (n a)²``,
  the state the large model would hold along the grown trajectory); other optimizers start
  the new parameters with empty state;
* **the learning-rate schedule** continues (its step count and per-group base rates are the
  scheduler's own); ``lr_scale`` multiplies the rates from the growth step on (a wider model
  often wants a smaller one);
* **gradient accumulation**: ``on_step_end`` runs after the optimizer step and
  ``zero_grad``, so no partial gradient exists at the moment of growth; accumulation restarts
  cleanly on the grown parameters.

Resuming: a checkpoint written at or after ``at_step`` holds the grown model, which the small
model cannot load; :meth:`GrowthCallback.model_for_checkpoint` returns the model in the shape
that checkpoint has (grown or not), to hand to the Trainer before ``train(resume_from_checkpoint=...)``.
The Trainer then loads the weights, optimizer state and scheduler as usual, and the callback
does not grow a second time (the growth step is behind).

Single process only: DDP/FSDP wrap the parameters at start-up and would keep the old ones
(refused with an error). Example::

    trainer = Trainer(model=small, args=args, train_dataset=data,
                      callbacks=[GrowthCallback(lambda m: widen(m, 2, noise=1.0), at_step=600)])
    trainer.train()
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kexue._optional import require_extra

require_extra("kexue.growth.callback", "transformers")

from transformers import TrainerCallback  # noqa: E402

from kexue._shared import check_bool, check_int, check_number  # noqa: E402
from kexue.growth.optim import transfer_adam_state  # noqa: E402

__all__ = ["GrowthCallback"]

_LAYER_INDEX = re.compile(r"\.\d+\.")


def _role(name: str) -> str:
    """A parameter's name with layer indices replaced: ``model.layers.3.mlp.up_proj.weight`` ->
    ``model.layers.#.mlp.up_proj.weight`` (the key that puts an inserted layer's parameters in
    their role's optimizer group)."""
    return _LAYER_INDEX.sub(".#.", name)


def _adopt(model: nn.Module, grown: nn.Module) -> None:
    """Make ``model`` the grown model in place: its submodules, own parameters, buffers and
    config become ``grown``'s (hooks registered on ``model`` itself are kept)."""
    model._modules.clear()
    model._modules.update(grown._modules)
    model._parameters.clear()
    model._parameters.update(grown._parameters)
    model._buffers.clear()
    model._buffers.update(grown._buffers)
    model.config = grown.config


def _unwrap(obj, attribute: str):
    """accelerate wraps the optimizer (``.optimizer``) and the scheduler (``.scheduler``)."""
    return getattr(obj, attribute, obj)


def _regroup(optimizer: torch.optim.Optimizer, small: nn.Module, large: nn.Module) -> None:
    """Replace every group's parameters by the large model's, matching roles by name."""
    group_of = {}
    for name, p in small.named_parameters():
        for g, group in enumerate(optimizer.param_groups):
            if any(p is q for q in group["params"]):
                group_of[_role(name)] = g
    new_params: list[list[nn.Parameter]] = [[] for _ in optimizer.param_groups]
    for name, p in large.named_parameters():
        if not p.requires_grad:
            continue
        if _role(name) not in group_of:
            raise ValueError(f"the grown model's parameter {name} has no counterpart in the optimizer's groups")
        new_params[group_of[_role(name)]].append(p)
    for group, params in zip(optimizer.param_groups, new_params):
        group["params"] = params


class GrowthCallback(TrainerCallback):
    """Grow the model after optimizer step ``at_step`` inside ``Trainer.train()``.

    Args:
        grow: the operator, a function small model -> grown model, e.g.
            ``lambda m: widen(m, 2, noise=1.0)`` or ``lambda m: deepen(m, range(4))``. It must be
            a gather-and-scale map of the weights (every kexue operator is) for the optimizer
            state to be carried; set ``transfer_optimizer_state=False`` for anything else
            (stacking trained layers, say), which starts the optimizer state afresh.
        at_step: the optimizer step (``state.global_step``) after which to grow, ``>= 1``.
        lr_scale: factor applied to the learning rates (and the scheduler's base rates) from
            the growth on; ``1`` keeps the schedule.
        transfer_optimizer_state: carry Adam's moments (the default) or start from empty state.

    Attributes:
        grown_at: the step at which this callback grew the model, or None.
    """

    def __init__(self, grow: Callable[[nn.Module], nn.Module], at_step: int, *, lr_scale: float = 1.0,
                 transfer_optimizer_state: bool = True) -> None:
        if not callable(grow):
            raise TypeError(f"grow must be a function model -> grown model, got {type(grow).__name__}")
        self.grow = grow
        self.at_step = check_int("at_step", at_step, 1)
        self.lr_scale = check_number("lr_scale", lr_scale, above=0)
        self.transfer_optimizer_state = check_bool("transfer_optimizer_state", transfer_optimizer_state)
        self.grown_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise RuntimeError("GrowthCallback runs in a single process: DDP/FSDP keep the parameters they wrapped at start-up")

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if state.global_step == self.at_step and self.grown_at is None:
            self.grow_in_place(model, optimizer, lr_scheduler)
            self.grown_at = state.global_step
        return control

    def grow_in_place(self, model: nn.Module, optimizer=None, lr_scheduler=None) -> None:
        """Grow ``model`` now, carrying ``optimizer``'s state and ``lr_scheduler``'s rates."""
        grown = self.grow(model)
        if optimizer is not None:
            self._move_optimizer(_unwrap(optimizer, "optimizer"), model, grown)
        if lr_scheduler is not None and self.lr_scale != 1.0:
            self._scale_rates(_unwrap(optimizer, "optimizer") if optimizer is not None else None, _unwrap(lr_scheduler, "scheduler"))
        _adopt(model, grown)

    def _move_optimizer(self, optimizer: torch.optim.Optimizer, small: nn.Module, grown: nn.Module) -> None:
        old_params = [p for group in optimizer.param_groups for p in group["params"]]
        old_state = {p: optimizer.state[p] for p in old_params if p in optimizer.state}
        _regroup(optimizer, small, grown)
        for p in old_params:
            optimizer.state.pop(p, None)
        is_adam = all("exp_avg" in s and "exp_avg_sq" in s for s in old_state.values()) and old_state
        if self.transfer_optimizer_state and is_adam:
            transfer_adam_state(_StateView(old_state), small, optimizer, grown, self.grow)

    def _scale_rates(self, optimizer: torch.optim.Optimizer | None, scheduler) -> None:
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * self.lr_scale for lr in scheduler.base_lrs]
        for group in (optimizer.param_groups if optimizer is not None else []):
            group["lr"] *= self.lr_scale
            if "initial_lr" in group:
                group["initial_lr"] *= self.lr_scale

    def model_for_checkpoint(self, model: nn.Module, checkpoint: str | Path) -> nn.Module:
        """``model`` in the shape a Trainer checkpoint holds: grown when the checkpoint was
        written at or after ``at_step`` (its ``trainer_state.json``), else unchanged. Pass the
        result to the Trainer that resumes from ``checkpoint``; the weights are then loaded."""
        path = Path(checkpoint) / "trainer_state.json"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint={str(checkpoint)!r}: no trainer_state.json (not a Trainer checkpoint folder)")
        step = int(json.loads(path.read_text())["global_step"])
        if step < self.at_step:
            return model
        self.grown_at = self.at_step
        return self.grow(model)


class _StateView:
    """The optimizer state of the small model's parameters, as transfer_adam_state reads it."""

    def __init__(self, state: dict) -> None:
        self.state = state
