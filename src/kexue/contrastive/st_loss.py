"""kexue's cached InfoNCE as a sentence-transformers loss: a drop-in for ``SentenceTransformerTrainer``.

:class:`CachedContrastiveLoss` takes the trainer's columns (anchor, positive, then any number
of hard-negative columns) and computes the article's procedure (:mod:`kexue.contrastive.cached`)
inside the trainer's ``loss.backward()``:

1. every column is embedded micro-batch by micro-batch without gradient, the RNG state of the
   CPU and of every device the model and the features use saved before each micro-batch;
2. the InfoNCE loss of the whole batch (anchor ``i`` against every positive and hard negative,
   its own positive the target) is computed on the cached embeddings and differentiated up to
   them, in the forward call;
3. the returned loss's backward replays each micro-batch with its saved RNG state and
   backpropagates ``⟨h, ∂L/∂h⟩`` scaled by the incoming gradient, so the trainer's gradient
   accumulation and fp16 loss scaling reach every micro-batch.

What it adds to sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (whose gradient
it equals at the same scale and similarity, tested):

* a learnable temperature (``learnable_scale=True``, CLIP's ``log(1/τ)``), whose gradient also
  flows through the trainer's backward;
* tiled similarities (``tiled=True``): the ``N × M`` matrix is never materialised;
* ``sort_by_length`` (default on): inside a step the samples are embedded shortest-padding
  first, in micro-batches of similar lengths, each cut to its own longest sequence; the loss
  and gradient are those of the batch in its original order (up to float rounding of the
  different matrix shapes);
* ``micro_batch_tokens``: micro-batches by a padded-token budget instead of a count;
* ``distributed=True``: negatives gathered from every rank, the exact global-batch gradient,
  and one gradient reduction per step under DDP or FSDP2
  (:class:`kexue.contrastive.distributed.StepSync`);
* :func:`kexue.contrastive.verify.verify_cached_gradients` to check it on your model.

It composes with ``MatryoshkaLoss`` (it exposes ``calculate_loss`` and
``uses_gradient_cache``, the contract that wrapper uses for cached losses).

Reference: Su Jianlin, https://kexue.fm/archives/8471; Gao et al., GradCache, arXiv:2101.06983.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kexue._device import RngState
from kexue._shared import check_bool, check_int, check_number, check_process_group
from kexue.contrastive import distributed as dist_utils
from kexue.contrastive.cached import (
    ReplayItem,
    _check_batchnorm,
    encode,
    encoder_devices,
    replay_backward,
    replayed_devices,
)
from kexue.contrastive.losses import InfoNCE, Similarity

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["CachedContrastiveLoss", "MicroBatchPlan", "plan_micro_batches"]


@dataclass
class MicroBatchPlan:
    """How one column of a batch is split.

    Args:
        groups: sample indices of each micro-batch, in the order they are embedded.
        widths: the padded width each micro-batch is cut to (``None``: kept whole).
        inverse: the permutation putting the concatenated micro-batches back in batch order.
    """

    groups: list[torch.Tensor]
    widths: list[int | None]
    inverse: torch.Tensor


def _size(feature: dict[str, Any]) -> int:
    for key in ("input_ids", "attention_mask"):
        if isinstance(feature.get(key), torch.Tensor):
            return feature[key].shape[0]
    for value in feature.values():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return value.shape[0]
    raise ValueError(
        f"a sentence feature needs a batched tensor (input_ids, attention_mask, ...); got keys {sorted(feature)}"
    )


def plan_micro_batches(
    feature: dict[str, Any],
    *,
    micro_batch_size: int,
    micro_batch_tokens: int | None = None,
    sort_by_length: bool = True,
) -> MicroBatchPlan:
    """Split one tokenised column into micro-batches.

    By count (``micro_batch_size`` samples each) or, with ``micro_batch_tokens``, greedily
    packed so that each micro-batch's padded size (its count times its longest sequence) stays
    within the budget (a single longer sequence forms its own). With ``sort_by_length`` the
    samples are taken longest first, so each micro-batch holds similar lengths. Micro-batches of
    a right-padded batch are cut to their own longest sequence.

    The index tensors live on the attention mask's device; the lengths reach the host once
    (one transfer per column, none without an attention mask), never once per micro-batch.

    Args:
        feature: one column's features (``input_ids``, ``attention_mask``, ...).
        micro_batch_size: samples per micro-batch (without ``micro_batch_tokens``).
        micro_batch_tokens: the padded-token budget of a micro-batch (``None``: by count).
        sort_by_length: take the samples longest first.

    Returns:
        The :class:`MicroBatchPlan`.

    Example:
        >>> mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]])
        >>> plan = plan_micro_batches({"attention_mask": mask}, micro_batch_size=2)
        >>> [g.tolist() for g in plan.groups], plan.widths
        ([[1, 2], [0]], [3, 1])
    """
    n = _size(feature)
    mask = feature.get("attention_mask")
    if not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
        order = torch.arange(n, device=mask.device if isinstance(mask, torch.Tensor) else None)
        groups = list(order.split(micro_batch_size))
        return MicroBatchPlan(groups=groups, widths=[None] * len(groups), inverse=order)
    lengths = mask.sum(dim=1)  # (n,)
    order = (
        torch.argsort(lengths, descending=True, stable=True) if sort_by_length else torch.arange(n, device=mask.device)
    )
    right_padded = (mask[:, 1:] <= mask[:, :-1]).all()
    host = torch.cat([lengths[order], right_padded.reshape(1).to(lengths.dtype)]).tolist()  # the one transfer
    sorted_lengths, right = host[:-1], bool(host[-1])
    bounds = _pack(sorted_lengths, micro_batch_size, micro_batch_tokens)
    groups = [order[lo:hi] for lo, hi in bounds]
    widths = [max(sorted_lengths[lo:hi]) if right and hi > lo else None for lo, hi in bounds]
    return MicroBatchPlan(groups=groups, widths=widths, inverse=torch.argsort(order))


def _pack(lengths: list[int], size: int, tokens: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` of each micro-batch over samples of these ``lengths`` (in embedding order)."""
    n = len(lengths)
    if tokens is None:
        return [(i, min(i + size, n)) for i in range(0, n, size)]
    bounds, start, longest = [], 0, 0
    for i, length in enumerate(lengths):
        if i > start and max(longest, length) * (i - start + 1) > tokens:  # adding it would pass the budget
            bounds.append((start, i))
            start, longest = i, 0
        longest = max(longest, length)
    if start < n:
        bounds.append((start, n))
    return bounds


def tokenized(model: Any, texts: Sequence[str]) -> dict[str, Any]:
    """A sentence-transformers model's features for ``texts``, on the model's device.

    Args:
        model: a ``SentenceTransformer`` (its ``preprocess``, or ``tokenize`` before 5.0).
        texts: the sentences.

    Returns:
        The features, tensors moved to the device of the model's first parameter.
    """
    prepare = getattr(model, "preprocess", None) or model.tokenize
    device = next(model.parameters()).device
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in prepare(list(texts)).items()}


def take(feature: dict[str, Any], index: torch.Tensor, width: int | None) -> dict[str, Any]:
    """Samples ``index`` of a tokenised column, sequences cut to ``width`` (batched tensors only).

    Args:
        feature: one column's features.
        index: the samples to take.
        width: the padded width to cut the token tensors to (``None``: kept whole).

    Returns:
        The micro-batch's features (entries that are not batched tensors kept as they are).
    """
    n = _size(feature)
    out = {}
    for key, value in feature.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            value = value[index.to(value.device)]
            if (
                width is not None
                and value.dim() == 2
                and key in ("input_ids", "attention_mask", "token_type_ids", "position_ids")
            ):
                value = value[:, :width]
        out[key] = value
    return out


class _Replay(torch.autograd.Function):
    """Passes the loss through; its backward runs the grad pass (step 3) with the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any, loss: torch.Tensor, anchor: torch.Tensor, replay: Callable[[torch.Tensor], None]
    ) -> torch.Tensor:
        ctx.replay, ctx.attached = replay, loss.requires_grad
        return loss.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        ctx.replay(grad)
        return (grad if ctx.attached else None), None, None


class CachedContrastiveLoss(nn.Module):
    """InfoNCE over anchor, positive and hard-negative columns with the exact large-batch gradient.

    Args:
        model: the ``SentenceTransformer`` being trained (the trainer swaps in its wrapped model).
        scale: ``1/τ`` (20, sentence-transformers' default, is ``τ = 0.05``).
        learnable_scale: learn ``log scale``, clamped to ``max_scale``.
        max_scale: the clamp of a learnable scale.
        similarity: ``"cosine"`` or ``"dot"``.
        symmetric: average with the positive → anchor direction (hard-negative columns are not
            targets there).
        tiled: never materialise the ``N × M`` similarities (row direction only).
        tile: the tile size of ``tiled``.
        micro_batch_size: samples per micro-batch (the memory knob).
        micro_batch_tokens: pack micro-batches by padded tokens instead (count × longest
            sequence ≤ this); ``micro_batch_size`` is then ignored.
        sort_by_length: embed similar lengths together (see the module docstring).
        replay_rng: replay each micro-batch's RNG state in the grad pass (exact with dropout).
        distributed: gather the embeddings of every rank (``torch.distributed`` initialised, e.g.
            by ``torchrun``): the loss of the global batch, and its exact gradient.
        group: the process group (default: the world).

    The returned loss's ``backward()`` leaves the gradient in the parameters, as any loss does.
    Called with gradients disabled (evaluation), it only computes the loss. In a trainer:
    ``SentenceTransformerTrainer(model=model, train_dataset=pairs, loss=CachedContrastiveLoss(model))``.

    Example:
        >>> embed = nn.EmbeddingBag(50, 8)  # stands in for a SentenceTransformer
        >>> loss = CachedContrastiveLoss(lambda features: embed(features["input_ids"]), micro_batch_size=2)
        >>> ids = torch.randint(0, 50, (6, 5))
        >>> loss([{"input_ids": ids}, {"input_ids": ids.flip(0)}]).backward()
        >>> embed.weight.grad.shape
        torch.Size([50, 8])
    """

    # MatryoshkaLoss (and AdaptiveLayerLoss) look for this: see sentence_transformers' gradcache
    uses_gradient_cache = True

    def __init__(
        self,
        model: Any,
        *,
        scale: float = 20.0,
        learnable_scale: bool = False,
        max_scale: float = 100.0,
        similarity: Similarity = "cosine",
        symmetric: bool = False,
        tiled: bool = False,
        tile: int = 1024,
        micro_batch_size: int = 32,
        micro_batch_tokens: int | None = None,
        sort_by_length: bool = True,
        replay_rng: bool = True,
        distributed: bool = False,
        group: ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(
                f"model must be a SentenceTransformer (or a callable on its features); got {type(model).__name__}"
            )
        self.model = model
        self.info_nce = InfoNCE(
            temperature=1.0 / check_number("scale", scale, above=0),
            learnable=check_bool("learnable_scale", learnable_scale),
            similarity=similarity,
            symmetric=check_bool("symmetric", symmetric),
            tiled=check_bool("tiled", tiled),
            tile=check_int("tile", tile, 1),
            max_scale=check_number("max_scale", max_scale, above=0),
        )
        self.micro_batch_size = check_int("micro_batch_size", micro_batch_size, 1)
        self.micro_batch_tokens = (
            None if micro_batch_tokens is None else check_int("micro_batch_tokens", micro_batch_tokens, 1)
        )
        self.sort_by_length = check_bool("sort_by_length", sort_by_length)
        self.replay_rng = check_bool("replay_rng", replay_rng)
        self.distributed = check_bool("distributed", distributed)
        self.group = group
        self._plans: list[MicroBatchPlan] = []

    # --- the trainer's entry point ---------------------------------------------------------------

    def forward(
        self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The batch loss; its ``backward()`` replays the micro-batches (steps 1 and 2 run here).

        Args:
            sentence_features: the trainer's tokenised columns: anchor, positive, then any
                hard negatives.
            labels: ignored (the targets are the positives), as in sentence-transformers.

        Returns:
            The scalar loss of the whole batch (with ``distributed``, of the global batch).
        """
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(
                f"CachedContrastiveLoss needs an anchor and a positive column (then any hard-negative columns); "
                f"got {len(features)} column(s)"
            )
        _check_batchnorm(self.model)
        if self.distributed:
            check_process_group()
        self._plans = [
            plan_micro_batches(
                f,
                micro_batch_size=self.micro_batch_size,
                micro_batch_tokens=self.micro_batch_tokens,
                sort_by_length=self.sort_by_length,
            )
            for f in features
        ]
        dist_utils.check_fsdp_counts([self.model], sum(len(p.groups) for p in self._plans), group=self.group)
        training = torch.is_grad_enabled()
        rng = self._rng_devices(features)
        reps, states = self._embed(features, capture=training, rng=rng)
        if not training:
            return self.calculate_loss(reps, labels)
        loss = self.calculate_loss(reps, labels, with_backward=True)
        replay = _ReplayPass(
            loss=self,
            features=features,
            plans=list(self._plans),
            cache=_embedding_grads(reps),
            states=states,
            after=RngState(rng),
        )
        return _Replay.apply(loss, torch.zeros((), requires_grad=True), replay)

    # --- MatryoshkaLoss's contract ---------------------------------------------------------------

    def calculate_loss(
        self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *, with_backward: bool = False
    ) -> torch.Tensor:
        """The batch loss from per-column, per-micro-batch embeddings (in this step's plan).

        With ``with_backward``, differentiate it up to ``reps`` (their ``.grad``) and return it,
        still attached to a learnable scale so that scale's gradient flows in the outer backward.

        Args:
            reps: each column's embeddings, one tensor per micro-batch of the plan.
            labels: ignored (the targets are the positives).
            with_backward: differentiate up to ``reps`` (step 2 of a training step).

        Returns:
            The scalar InfoNCE loss of the batch (anchor ``i``'s target: positive ``i``).
        """
        if len(reps) != len(self._plans):
            raise ValueError(f"got embeddings of {len(reps)} columns for a plan of {len(self._plans)}")
        columns = [
            torch.cat(parts)[plan.inverse.to(parts[0].device)] for parts, plan in zip(reps, self._plans, strict=True)
        ]
        anchors, documents = columns[0], columns[1:]
        if self.distributed:
            anchors = dist_utils.gather_with_local(anchors, group=self.group)[0]
            documents = [dist_utils.gather_with_local(d, group=self.group)[0] for d in documents]
        loss = self.info_nce(anchors, torch.cat(documents))  # anchor i's target: positive i
        if not with_backward:
            return loss
        leaves = [part for parts in reps for part in parts]
        learnable = self.info_nce.log_scale.requires_grad
        torch.autograd.backward(loss, inputs=leaves, retain_graph=learnable)
        return loss if learnable else loss.detach()

    def get_config_dict(self) -> dict[str, Any]:
        """The loss's settings, as sentence-transformers' model card records them.

        Returns:
            The options (the current scale, for a learnable one).
        """
        return {
            "scale": float(self.info_nce.scale),
            "learnable_scale": self.info_nce.log_scale.requires_grad,
            "similarity": self.info_nce.similarity,
            "symmetric": self.info_nce.symmetric,
            "tiled": self.info_nce.tiled,
            "micro_batch_size": self.micro_batch_size,
            "micro_batch_tokens": self.micro_batch_tokens,
            "sort_by_length": self.sort_by_length,
            "distributed": self.distributed,
        }

    @property
    def citation(self) -> str:
        """The BibTeX entry of the article, for the model card."""
        return (
            "@misc{su2021contrastive, title={Can contrastive learning use gradient accumulation?}, "
            "author={Su Jianlin}, year={2021}, url={https://kexue.fm/archives/8471}}"
        )

    # --- steps 1 and 3 ---------------------------------------------------------------------------

    def _rng_devices(self, features: list[dict[str, Any]]) -> list[torch.device]:
        """The devices whose generators are replayed: the model's and the features' (see
        :func:`~kexue.contrastive.cached.replayed_devices`)."""
        return replayed_devices([self.model], encoder_devices([self.model], features))

    def _embed(
        self, features: list[dict[str, Any]], *, capture: bool, rng: list[torch.device]
    ) -> tuple[list[list[torch.Tensor]], list[list[RngState]]]:
        """Step 1: every micro-batch without gradient (the RNG state of every device saved before each)."""
        reps: list[list[torch.Tensor]] = []
        states: list[list[RngState]] = []
        with torch.no_grad():
            for feature, plan in zip(features, self._plans, strict=True):
                parts: list[torch.Tensor] = []
                column_states: list[RngState] = []
                for index, width in zip(plan.groups, plan.widths, strict=True):
                    if capture:
                        column_states.append(RngState(rng))
                    h = encode(self.model, take(feature, index, width))
                    parts.append(h.detach().requires_grad_(capture))
                reps.append(parts)
                states.append(column_states)
        return reps, states


def _embedding_grads(reps: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Step 2's cache: ``∂L/∂h`` of every micro-batch of every column (a column without one is refused)."""
    cache = []
    for column, parts in enumerate(reps):
        grads = [part.grad for part in parts]
        if any(grad is None for grad in grads):
            raise ValueError(f"column {column} received no gradient from the loss; remove it from the dataset")
        cache.append([grad.detach().clone() for grad in grads if grad is not None])
    return cache


@dataclass
class _ReplayPass:
    """Step 3 of one forward call, bound to its own plan, gradients and RNG states."""

    loss: CachedContrastiveLoss
    features: list[dict[str, Any]]
    plans: list[MicroBatchPlan]
    cache: list[list[torch.Tensor]]
    states: list[list[RngState]]
    after: RngState

    def __call__(self, grad_output: torch.Tensor) -> None:
        sync = dist_utils.StepSync([self.loss.model], distributed=self.loss.distributed, group=self.loss.group)
        count = sum(len(plan.groups) for plan in self.plans)
        replay_backward(self._items(), count, sync, weight=grad_output.detach() * sync.scale)
        self.after.restore()

    def _items(self) -> Iterator[ReplayItem]:
        """The micro-batches in the order of step 1, their inputs taken as they are replayed."""
        for feature, plan, grads, states in zip(self.features, self.plans, self.cache, self.states, strict=True):
            for index, width, grad, state in zip(plan.groups, plan.widths, grads, states, strict=True):
                yield ReplayItem(
                    encoder=self.loss.model,
                    inputs=take(feature, index, width),
                    grad=grad.float(),  # ⟨h, g⟩ in float32, whatever the model's dtype
                    rng=state if self.loss.replay_rng else None,
                )
