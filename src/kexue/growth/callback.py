"""Staged training inside one ``transformers.Trainer.train()`` run: grow the model at a step.

:class:`GrowthCallback` grows the model after optimizer step ``at_step`` and training goes on
in the same run, as if the large model had been there from the start:

* **the model** is grown by any operator of :mod:`kexue.growth` (or a composition), then
  moved *into the object the Trainer holds*: its submodules, parameters, buffers and config are
  replaced, so every reference the Trainer, accelerate and other callbacks keep stays valid;
* **the optimizer** keeps its parameter groups (weight decay or not, per-layer rates): each
  grown parameter joins the group of the parameter it was grown from (read off the operator's
  gather-and-scale map, so a layer moved by an insertion keeps its own group), frozen ones stay
  frozen, and an inserted layer's fresh parameters join their role's group. Adam/AdamW moments go
  through the same maps as the weights (:func:`~kexue.growth.transfer_adam_state`:
  ``m̃ = m / (n a)``, ``ṽ = v / (n a)²``, the state the large model would hold along the grown
  trajectory); other optimizers start the new parameters with empty state;
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

Planning: :meth:`GrowthCallback.plan` computes the grown model, the new optimizer groups and the
carried state without changing anything, on a model on the meta device too (shapes, config and
groups; no optimizer state there).

Single process only: DDP/FSDP wrap the parameters at start-up and would keep the old ones
(refused with an error). Example::

    trainer = Trainer(model=small, args=args, train_dataset=data,
                      callbacks=[GrowthCallback(lambda m: widen(m, 2, noise=1.0), at_step=600)])
    trainer.train()
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kexue._shared import check_bool, check_int, check_number
from kexue.growth.optim import GrowthMap, parameter_sources, transfer_adam_state

__all__ = ["GrowthCallback", "GrowthPlan"]

_LAYER_INDEX = re.compile(r"\.\d+\.")


def _role(name: str) -> str:
    """A parameter's name with layer indices replaced: ``model.layers.3.mlp.up_proj.weight`` ->
    ``model.layers.#.mlp.up_proj.weight`` (the key that puts an inserted layer's parameters in
    their role's optimizer group)."""
    return _LAYER_INDEX.sub(".#.", name)


def _adopt(model: nn.Module, grown: nn.Module) -> None:
    """Make ``model`` the grown model in place: its submodules, own parameters, buffers, config
    and the public attributes HF models copy from the config in ``__init__`` (``num_experts``,
    ``vocab_size``, ...) become ``grown``'s; hooks registered on ``model`` itself are kept."""
    for registry in ("_modules", "_parameters", "_buffers"):
        getattr(model, registry).clear()
        getattr(model, registry).update(getattr(grown, registry))
    for name, value in vars(grown).items():
        if not name.startswith("_") and name != "training":
            setattr(model, name, value)


T = TypeVar("T")


def _unwrap(obj: T, attribute: str) -> T:
    """accelerate wraps the optimizer (``.optimizer``) and the scheduler (``.scheduler``): the
    wrapped object, which the caller uses as it would the wrapper."""
    inner: T = getattr(obj, attribute, obj)
    return inner


def _new_groups(
    optimizer: torch.optim.Optimizer, small: nn.Module, large: nn.Module, source_of: Callable[[str], str | None]
) -> list[list[nn.Parameter]]:
    """The large model's parameters per optimizer group. A parameter grown from a small one
    (``source_of(name)``: a widened weight, a layer moved by an insertion; ``GrowthMap.source``,
    or :func:`~kexue.growth.optim.parameter_sources` on the meta device) joins its source's group
    and keeps its ``requires_grad``, so per-layer learning rates and frozen weights survive. A
    fresh one (an inserted layer's) joins its role's group when that role lives in one group,
    stays frozen where its role is frozen everywhere, and is refused otherwise (which rate
    would it get?)."""
    group_of = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    small_params = dict(small.named_parameters())
    roles: dict[str, set[int]] = {}
    for name, p in small_params.items():
        if id(p) in group_of:
            roles.setdefault(_role(name), set()).add(group_of[id(p)])
    trainable_roles = {_role(n) for n, p in small_params.items() if p.requires_grad}
    groups: list[list[nn.Parameter]] = [[] for _ in optimizer.param_groups]
    for name, p in large.named_parameters():
        source = source_of(name)
        if source is not None:
            p.requires_grad_(small_params[source].requires_grad)
            if id(small_params[source]) in group_of:
                groups[group_of[id(small_params[source])]].append(p)
        elif _role(name) not in trainable_roles:
            p.requires_grad_(False)
        elif len(roles.get(_role(name), ())) == 1:
            groups[next(iter(roles[_role(name)]))].append(p)
        else:
            where = "no optimizer group holds its role" if _role(name) not in roles else "its role spans several groups"
            raise ValueError(
                f"the grown model's new parameter {name}: {where} ({_role(name)}); give the Trainer an optimizer "
                "whose groups hold each role once, or grow with an operator that adds no parameters"
            )
    return groups


@dataclass
class GrowthPlan:
    """What :meth:`GrowthCallback.grow_in_place` installs: the grown model, the large model's
    parameters per optimizer group (None without an optimizer) and the optimizer state keyed
    by those parameters (empty when not carried, and on the meta device)."""

    grown: nn.Module
    groups: list[list[nn.Parameter]] | None
    state: dict[torch.Tensor, dict[str, Any]] = field(default_factory=dict)


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

    def __init__(
        self,
        grow: Callable[[nn.Module], nn.Module],
        at_step: int,
        *,
        lr_scale: float = 1.0,
        transfer_optimizer_state: bool = True,
    ) -> None:
        if not callable(grow):
            raise TypeError(f"grow must be a function model -> grown model, got {type(grow).__name__}")
        self.grow = grow
        self.at_step = check_int("at_step", at_step, 1)
        self.lr_scale = check_number("lr_scale", lr_scale, above=0)
        self.transfer_optimizer_state = check_bool("transfer_optimizer_state", transfer_optimizer_state)
        self.grown_at: int | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Refuse a distributed run (the Trainer calls it at the start of ``train()``).

        Args:
            args: the Trainer's arguments.
            state: the Trainer's state.
            control: the Trainer's control flags.
            **kwargs: the Trainer's other objects (model, optimizer, ...).
        """
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            raise RuntimeError(
                "GrowthCallback runs in a single process: DDP/FSDP keep the parameters they wrapped at start-up"
            )

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> TrainerControl:
        """Grow after optimizer step ``at_step`` (the Trainer calls it after every step).

        Args:
            args: the Trainer's arguments.
            state: the Trainer's state (``global_step``).
            control: the Trainer's control flags, returned unchanged.
            model: the model the Trainer trains; grown in place.
            optimizer: its optimizer (possibly accelerate's wrapper); its groups and state follow.
            lr_scheduler: its scheduler; its base rates follow ``lr_scale``.
            **kwargs: the Trainer's other objects.

        Returns:
            ``control``.
        """
        if state.global_step == self.at_step and self.grown_at is None:
            if model is None:
                raise ValueError("GrowthCallback.on_step_end: the Trainer passed no model to grow")
            self.grow_in_place(model, optimizer, lr_scheduler)
            self.grown_at = state.global_step
        return control

    def plan(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> GrowthPlan:
        """Everything :meth:`grow_in_place` would change, computed without changing anything: the
        grown model, each optimizer group's new parameters and the carried Adam state.

        Works on a model on the meta device (accelerate's ``init_empty_weights``), to check a
        growth of a model too large to load: the grown model is then a meta model with the grown
        shapes and config, the groups are read off :func:`~kexue.growth.optim.parameter_sources`
        (no values needed), and the optimizer state is left empty (there are no moments to carry).

        Args:
            model: the small model.
            optimizer: its optimizer (possibly accelerate's wrapper), or None.

        Returns:
            The :class:`GrowthPlan`.
        """
        grown = self.grow(model)
        optimizer = _unwrap(optimizer, "optimizer") if optimizer is not None else None
        if optimizer is None:
            return GrowthPlan(grown=grown, groups=None, state={})
        if any(p.is_meta for p in model.parameters()):
            sources = parameter_sources(model, self.grow)
            return GrowthPlan(grown=grown, groups=_new_groups(optimizer, model, grown, sources.get), state={})
        gmap = GrowthMap.probe(model, self.grow)
        groups = _new_groups(optimizer, model, grown, gmap.source)
        state = self._new_state(optimizer, model, grown, [p for g in groups for p in g], gmap)
        return GrowthPlan(grown=grown, groups=groups, state=state)

    def grow_in_place(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, lr_scheduler: Any = None
    ) -> None:
        """Grow ``model`` now, carrying ``optimizer``'s groups and state and ``lr_scheduler``'s
        rates. Everything that can fail (the groups, the Adam-state map) is computed before
        anything is changed (:meth:`plan`): an error leaves the model and the optimizer as they were.

        Args:
            model: the model to grow in place (the object the Trainer holds).
            optimizer: its optimizer (possibly accelerate's wrapper), or None.
            lr_scheduler: its learning-rate scheduler (possibly wrapped), or None.
        """
        plan = self.plan(model, optimizer)
        optimizer = _unwrap(optimizer, "optimizer") if optimizer is not None else None
        if optimizer is not None and plan.groups is not None:
            old = [p for group in optimizer.param_groups for p in group["params"]]
            for group, params in zip(optimizer.param_groups, plan.groups, strict=True):
                group["params"] = params
            for p in old:
                optimizer.state.pop(p, None)
            optimizer.state.update(plan.state)
        if self.lr_scale != 1.0:
            self._scale_rates(optimizer, _unwrap(lr_scheduler, "scheduler") if lr_scheduler is not None else None)
        _adopt(model, plan.grown)

    def _new_state(
        self,
        optimizer: torch.optim.Optimizer,
        small: nn.Module,
        grown: nn.Module,
        params: list[nn.Parameter],
        gmap: GrowthMap,
    ) -> dict[torch.Tensor, dict[str, Any]]:
        """The optimizer state of the grown parameters: Adam's moments through the growth map,
        or nothing (``transfer_optimizer_state=False``, or an optimizer without Adam's state)."""
        held = [p for group in optimizer.param_groups for p in group["params"]]
        old = {p: optimizer.state[p] for p in held if p in optimizer.state}
        adam = [bool(s) and "exp_avg" in s and "exp_avg_sq" in s for s in old.values()]
        if not self.transfer_optimizer_state or not any(adam):
            return {}
        if not all(adam) or len(old) != len(held):
            raise ValueError(
                "GrowthCallback: some trained parameters hold no Adam state (never updated?); the moments "
                "cannot be carried: pass transfer_optimizer_state=False to start them empty"
            )
        target = _StateView({}, [{"params": params}])
        transfer_adam_state(_StateView(old), small, target, grown, self.grow, growth_map=gmap)
        return dict(target.state)

    def _scale_rates(self, optimizer: torch.optim.Optimizer | None, scheduler: Any) -> None:
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * self.lr_scale for lr in scheduler.base_lrs]
        for group in optimizer.param_groups if optimizer is not None else []:
            group["lr"] *= self.lr_scale
            if "initial_lr" in group:
                group["initial_lr"] *= self.lr_scale

    def model_for_checkpoint(self, model: nn.Module, checkpoint: str | Path) -> nn.Module:
        """``model`` in the shape a Trainer checkpoint holds: grown when the checkpoint was
        written at or after ``at_step`` (its ``trainer_state.json``), else unchanged. Pass the
        result to the Trainer that resumes from ``checkpoint``; the weights are then loaded.

        Args:
            model: the small model.
            checkpoint: a Trainer checkpoint folder (with ``trainer_state.json``).

        Returns:
            ``model``, or its grown copy.
        """
        path = Path(checkpoint) / "trainer_state.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint={str(checkpoint)!r}: no trainer_state.json (not a Trainer checkpoint folder)"
            )
        try:
            step = int(json.loads(path.read_text())["global_step"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"checkpoint={str(checkpoint)!r}: trainer_state.json has no readable global_step ({exc})"
            ) from None
        if step < self.at_step:
            return model
        self.grown_at = self.at_step
        return self.grow(model)


class _StateView:
    """An optimizer's ``state`` (and ``param_groups``) as :func:`transfer_adam_state` reads or
    writes them: the small model's old state, or the grown state before it is installed."""

    def __init__(self, state: MutableMapping[Any, Any], param_groups: list[dict[str, Any]] | None = None) -> None:
        self.state = state
        self.param_groups = param_groups or []
