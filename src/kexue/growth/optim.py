"""Carry Adam's state through a growth operator.

Every operator of :mod:`kexue.growth` maps each new parameter entry to one entry of the small
model times a constant: ``θ̃_j = a_j θ_{s(j)}`` (repetition, tiling, division by √k, ...), or
starts it fresh (``a_j = 0``: the zeroed projections and other parameters of inserted blocks).
At a grown point the copies of an entry receive equal gradients, so the chain rule
``g_s = Σ_{j: s(j)=s} a_j g̃_j`` gives the large model's gradient

.. math::  \\tilde g_j = g_{s(j)} / (n_{s(j)}\\, a_j),

with ``n_s`` the number of copies of entry ``s``. Adam's moments are running averages of
gradients and squared gradients, so the state the large model would hold had it been trained
along the grown trajectory is ``m̃_j = m_{s(j)} / (n a_j)`` and ``ṽ_j = v_{s(j)} / (n a_j)²``,
with the same step count; fresh entries start at zero (and a wholly fresh parameter at step 0).
:func:`transfer_adam_state` writes that state; the gradient identity is tested in float64.

The map ``(s, a)`` is read off the operator itself: it is run on two probe copies of the small
model, one with every weight 1 (giving ``a``) and one with entry ``i`` holding ``i + 1``
(giving ``s``), in float64. Any composition of kexue's operators works.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from kexue.growth._build import Provenance, probe_mode, tracking

__all__ = ["GrowthMap", "parameter_sources", "transfer_adam_state"]


class OptimizerLike(Protocol):
    """What :func:`transfer_adam_state` reads and writes of an optimizer: a ``torch.optim.Optimizer``,
    or a stand-in holding a state before it is installed (:class:`~kexue.growth.callback.GrowthCallback`)."""

    @property
    def state(self) -> MutableMapping[Any, Any]: ...

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...


def _check_not_meta(model: nn.Module, what: str) -> None:
    """Refuse a model with parameters on the meta device where values must be read."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            f"{what}: model is on the meta device, which holds no values; this step needs them "
            "(load the weights first). Planning on meta: parameter_sources, the growth operators themselves"
        )


def parameter_sources(small: nn.Module, grow: Callable[[nn.Module], nn.Module]) -> dict[str, str | None]:
    """For each parameter of ``grow(small)``, the parameter of ``small`` its values come from (the
    first, for one gathered from several), or None for a fresh one (an inserted layer's).

    The per-parameter summary of :meth:`GrowthMap.source`, read without values: ``grow`` runs
    (as in the probe: no noise, inserted layers fresh) while :class:`~kexue.growth._build.Provenance`
    follows every tensor's sources through the torch calls. Works on any device, the meta device
    included, where the value probe cannot run: the planning of
    :class:`~kexue.growth.callback.GrowthCallback` on a model too large to load.
    """
    with probe_mode(), tracking(Provenance()) as tracker:
        for name, p in small.named_parameters():
            tracker.tag(p, (name,))
        large = grow(small)
        return {name: next(iter(tracker.of(p)), None) for name, p in large.named_parameters()}


def _check_no_split(index: dict[str, torch.Tensor], scale: dict[str, torch.Tensor], n_small: int) -> None:
    """Refuse a map in which one small entry feeds several large parameters at different scales.

    Copies within one parameter play one role and receive equal gradients at a grown point.
    An entry split over two parameters at different scales cannot: ``g̃ = g/(n a)`` would give
    them gradients in the ratio of their scales, while the true ones depend on how the small
    model's summed gradient divides between the roles, which the small model does not record.
    The one such operator: widening an OPT whose tied head cannot take its ``1/k`` (no affine
    LayerNorm before it) unties the head, embedding ``rep(E)`` and head ``rep(E)/k``. (Equal
    scales, e.g. the layer-stacking baseline of :mod:`kexue.growth.experiment`, pass through:
    there ``g/n`` is the chosen heuristic, not an identity.)"""
    names = list(index)
    device = next(iter(index.values())).device if index else torch.device("cpu")
    seen = torch.full(
        (n_small,), float("nan"), dtype=torch.float64, device=device
    )  # the scale each source was first seen at
    owner = torch.full((n_small,), -1, dtype=torch.long, device=device)  # ... and in which parameter
    for i, name in enumerate(names):
        live = scale[name] > 0
        sources, a = index[name][live], scale[name][live]
        earlier = seen[sources]
        clash = ~torch.isnan(earlier) & ((earlier - a).abs() > 1e-9 * a)
        if clash.any():
            other = names[int(owner[sources[clash][0]])]
            raise ValueError(
                f"grow splits a parameter of the small model over {other} and {name} at different "
                "scales (e.g. an untied head): their gradients are not determined by the small model's, "
                "so the Adam state cannot be carried over; give the large model a fresh optimizer"
            )
        fresh = torch.isnan(earlier)
        seen[sources[fresh]], owner[sources[fresh]] = a[fresh], i


def _grow_probes(small: nn.Module, grow: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, nn.Module, int]:
    """``grow`` run (in probe mode) on two float64 copies of ``small``: every weight 1, and entry
    ``i`` of the concatenated parameters ``i + 1``; with the number of small entries."""
    ones, ids = copy.deepcopy(small).double(), copy.deepcopy(small).double()
    offset = 0
    with torch.no_grad():
        for (_, p1), (_, p2) in zip(ones.named_parameters(), ids.named_parameters(), strict=True):
            p1.fill_(1.0)
            p2.copy_(
                torch.arange(offset + 1, offset + p2.numel() + 1, dtype=torch.float64, device=p2.device).view_as(p2)
            )
            offset += p2.numel()
        with probe_mode():
            big_ones, big_ids = grow(ones), grow(ids)
    return big_ones, big_ids, offset


def _read_map(
    big_ones: nn.Module, big_ids: nn.Module, n_small: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per grown parameter: the flat source index of each entry and its scale (0: fresh), read off
    the two grown probes; a ValueError where the values are not a gather-and-scale map."""
    index: dict[str, torch.Tensor] = {}
    scale: dict[str, torch.Tensor] = {}
    for (name, p_ones), (_, p_ids) in zip(big_ones.named_parameters(), big_ids.named_parameters(), strict=True):
        a, v = p_ones.detach().flatten(), p_ids.detach().flatten()
        if (a < 0).any():
            raise ValueError(f"grow is not a gather-and-scale map: negative scale in {name}")
        fresh = a == 0
        pos = (v / torch.where(fresh, 1.0, a)).round()
        bad = ~fresh & (((v / torch.where(fresh, 1.0, a)) - pos).abs() > 1e-3) | ~fresh & ((pos < 1) | (pos > n_small))
        if bad.any():
            raise ValueError(f"grow is not a gather-and-scale map: {name} mixes entries of the small model")
        index[name] = torch.where(fresh, 0, pos.long() - 1)
        scale[name] = a
    return index, scale


def _copy_counts(
    index: dict[str, torch.Tensor], scale: dict[str, torch.Tensor], n_small: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per grown parameter: how many live copies each entry's source has, over every parameter."""
    copies = torch.zeros(n_small, dtype=torch.float64, device=device)
    for name in index:
        copies.index_add_(0, index[name], (scale[name] > 0).to(torch.float64))  # fresh entries add 0
    return {name: copies[index[name]] for name in index}


@dataclass
class GrowthMap:
    """Per new parameter: flat source indices into the concatenated small parameters, scales
    ``a`` (0 = fresh) and the copy count ``n`` of each entry's source.

    Args:
        index: per large parameter, each entry's flat index into the concatenated small parameters.
        scale: per large parameter, each entry's scale ``a`` (0: fresh).
        count: per large parameter, the number of live copies of each entry's source.
        small_names: the small model's parameter names, in order.
        small_sizes: their numbers of entries.

    Example:
        >>> from kexue.growth import widen
        >>> from kexue.growth.optim import GrowthMap
        >>> from kexue.growth.zoo import tiny_model
        >>> gmap = GrowthMap.probe(tiny_model("llama-tied"), lambda m: widen(m, 2))
        >>> gmap.source("model.layers.0.mlp.up_proj.weight")
        'model.layers.0.mlp.up_proj.weight'
    """

    index: dict[str, torch.Tensor]
    scale: dict[str, torch.Tensor]
    count: dict[str, torch.Tensor]
    small_names: list[str]
    small_sizes: list[int]

    @classmethod
    def probe(cls, small: nn.Module, grow: Callable[[nn.Module], nn.Module]) -> GrowthMap:
        """Read the gather-and-scale map of ``grow`` (a function small -> large), on the device of
        ``small``'s parameters (where the map's tensors then live).

        Args:
            small: the small model (with values: not on the meta device).
            grow: the operator, e.g. ``lambda m: widen(m, 2)``.

        Returns:
            The map.

        Raises:
            ValueError: ``small`` is on the meta device (the probe reads values; for the map of
                whole parameters without values see :func:`parameter_sources`).
        """
        _check_not_meta(small, "GrowthMap.probe")
        big_ones, big_ids, n_small = _grow_probes(small, grow)
        index, scale = _read_map(big_ones, big_ids, n_small)
        _check_no_split(index, scale, n_small)
        return cls(
            index=index,
            scale=scale,
            count=_copy_counts(index, scale, n_small, next(small.parameters()).device),
            small_names=[n for n, _ in small.named_parameters()],
            small_sizes=[p.numel() for p in small.parameters()],
        )

    def source(self, name: str) -> str | None:
        """The small parameter that the live entries of the large parameter ``name`` come from
        (the first one's, for a parameter gathered from several), or None for a fresh one.

        Args:
            name: a parameter name of the large model.

        Returns:
            A parameter name of the small model, or None.
        """
        live = self.scale[name] > 0
        if not live.any():
            return None
        first = self.index[name][live][:1]
        bounds = torch.cumsum(torch.tensor([0, *self.small_sizes], device=first.device), 0)
        return self.small_names[int(torch.bucketize(first, bounds, right=True)) - 1]

    def _apply(self, small_tensors: dict[str, torch.Tensor], power: int) -> dict[str, torch.Tensor]:
        flat = torch.cat([small_tensors[n].detach().flatten().double() for n in self.small_names])
        out = {}
        for name, a in self.scale.items():
            live = a > 0
            factor = torch.where(live, 1.0 / (self.count[name].clamp(min=1) * torch.where(live, a, 1.0)) ** power, 0.0)
            out[name] = flat[self.index[name]] * factor
        return out

    def gradients(self, small_grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The large model's gradient at the grown point, from the small model's (flat, float64).

        Args:
            small_grads: the small model's gradient (or Adam's ``exp_avg``) per parameter name.

        Returns:
            ``g / (n a)`` per large parameter name (flat, float64; fresh entries 0).
        """
        return self._apply(small_grads, 1)

    def second_moments(self, small_v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adam's second moments of the large model at the grown point, ``v / (n a)²``, from the
        small model's (flat, float64).

        Args:
            small_v: the small model's ``exp_avg_sq`` per parameter name.

        Returns:
            The large model's, per parameter name (flat, float64; fresh entries 0).
        """
        return self._apply(small_v, 2)


def transfer_adam_state(
    small_optimizer: OptimizerLike,
    small: nn.Module,
    large_optimizer: OptimizerLike,
    large: nn.Module,
    grow: Callable[[nn.Module], nn.Module],
    *,
    growth_map: GrowthMap | None = None,
) -> GrowthMap:
    """Fill ``large_optimizer``'s state (Adam / AdamW) from ``small_optimizer``'s.

    Args:
        small_optimizer: the Adam/AdamW that trained ``small`` (its state holds ``exp_avg``,
            ``exp_avg_sq``, ``step``, and ``max_exp_avg_sq`` with ``amsgrad``).
        small: the small model.
        large_optimizer: a fresh Adam/AdamW over ``large``'s parameters (its hyper-parameters,
            e.g. a new learning rate, are kept).
        large: the grown model, ``grow(small)`` (possibly with symmetry-breaking noise).
        grow: the operator that produced ``large`` from ``small``, e.g.
            ``lambda m: widen(m, 2)``; it is re-run on float64 probes (noise is ignored).
        growth_map: ``GrowthMap.probe(small, grow)`` when the caller has it already (the probe
            is not run again).

    Returns:
        The :class:`GrowthMap` used (reusable for further transfers of the same growth).

    Example:
        >>> import torch
        >>> from kexue.growth import transfer_adam_state, widen
        >>> from kexue.growth.zoo import tiny_model
        >>> small = tiny_model("llama-tied")
        >>> optimizer = torch.optim.AdamW(small.parameters())
        >>> ids = torch.tensor([[1, 2, 3, 4]])
        >>> small(input_ids=ids, labels=ids).loss.backward()
        >>> optimizer.step()
        >>> large = widen(small, 2)
        >>> large_optimizer = torch.optim.AdamW(large.parameters())
        >>> _ = transfer_adam_state(optimizer, small, large_optimizer, large, lambda m: widen(m, 2))
        >>> len(large_optimizer.state) == len(list(large.parameters()))
        True

    Raises:
        ValueError: a trainable parameter of ``large`` is not in ``large_optimizer``, a trainable
            parameter of ``small`` holds no Adam state (frozen ones need none: their moments count
            as zero and their grown copies stay frozen without state), ``grow`` does not match
            ``large``, or ``grow`` splits a small parameter over large ones at different scales
            (widening an OPT without affine LayerNorms unties its head: see ``_check_no_split``).
    """
    _check_not_meta(small, "transfer_adam_state")
    gmap = growth_map if growth_map is not None else GrowthMap.probe(small, grow)
    small_params = dict(small.named_parameters())
    states = _adam_states(small_optimizer, small_params)
    in_large_opt = {id(p) for group in large_optimizer.param_groups for p in group["params"]}
    large_params = dict(large.named_parameters())
    if set(large_params) != set(gmap.scale):
        raise ValueError("large does not have the parameters grow(small) has: pass the operator that produced it")

    def by_name(key: str) -> dict[str, torch.Tensor]:
        return {n: s[key] for n, s in zip(small_params, states, strict=True)}

    m, v = gmap.gradients(by_name("exp_avg")), gmap.second_moments(by_name("exp_avg_sq"))
    vmax = gmap.second_moments(by_name("max_exp_avg_sq")) if all("max_exp_avg_sq" in s for s in states) else None
    device = next(iter(gmap.index.values())).device
    steps = torch.tensor([float(s["step"]) for s in states], device=device)  # one host read per parameter, once
    bounds = torch.cumsum(torch.tensor([0] + [t.numel() for t in small_params.values()], device=device), 0)
    for name, p in large_params.items():
        if not p.requires_grad:
            continue  # frozen: no optimizer state
        if id(p) not in in_large_opt:
            raise ValueError(f"large_optimizer does not hold parameter {name}")
        if p.numel() != gmap.scale[name].numel():
            raise ValueError(f"parameter {name}: shape {tuple(p.shape)} does not match grow(small)")
        live = gmap.scale[name] > 0
        src = gmap.index[name][live]
        # a wholly fresh parameter starts at step 0; otherwise the step of its source
        owner = torch.bucketize(src, bounds, right=True) - 1
        step = float(steps[owner].max()) if live.any() else 0.0
        template = next(st["step"] for st in states if st.get("trained"))
        state = {
            "step": torch.tensor(step, dtype=template.dtype, device=template.device)
            if torch.is_tensor(template)
            else step,
            "exp_avg": m[name].view_as(p).to(p.device, p.dtype),
            "exp_avg_sq": v[name].view_as(p).to(p.device, p.dtype),
        }
        if vmax is not None:
            state["max_exp_avg_sq"] = vmax[name].view_as(p).to(p.device, p.dtype)
        large_optimizer.state[p] = state
    return gmap


def _adam_states(optimizer: OptimizerLike, params: dict[str, nn.Parameter]) -> list[dict[str, Any]]:
    """Each small parameter's Adam state; a frozen parameter without state gets zero moments
    at step 0 (it never moved). ``trained`` marks the states that came from the optimizer."""
    states = []
    for name, p in params.items():
        state = optimizer.state.get(p, {})
        if "exp_avg" in state and "exp_avg_sq" in state:
            states.append({**state, "trained": True})
        elif not p.requires_grad:
            states.append({"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": 0.0})
        else:
            raise ValueError(
                f"small_optimizer holds no Adam state for {name} (take at least one step first, or freeze it)"
            )
    if not any(st.get("trained") for st in states):
        raise ValueError(
            "small_optimizer holds no Adam state for any parameter of small (take at least one step first)"
        )
    if any("max_exp_avg_sq" in st for st in states):  # amsgrad
        for st in states:
            st.setdefault("max_exp_avg_sq", torch.zeros_like(st["exp_avg_sq"]))
    return states
