"""A raw masked-LM encoder, pre-trained here: the condition the whitening article's claim needs.

The article's gains (BERT-base first-last-avg 59.04 → whitening 71.20 on STS-B) are for raw
masked-language-model encoders, whose sentence vectors are anisotropic. The embedded
all-MiniLM-L6-v2 was fine-tuned for cosine similarity, and whitening hurts it. No raw BERT
checkpoint is available offline, so :func:`pretrain_raw_encoder` pre-trains a small BERT-style
encoder from scratch with BERT's masked-LM objective on the local text: every STS/SICK sentence
and the lines of tinyshakespeare. It uses the embedded model's WordPiece tokenizer, and the
saved folder loads with ``AutoModel``.

The recipe is BERT's: 15 % of the word pieces are chosen; of those, 80 % become ``[MASK]``,
10 % a random piece, and 10 % stay as they are. The loss is the cross-entropy of the chosen
pieces, with the output embedding tied to the input one. Only the chosen positions are scored,
which keeps the 30,522-way softmax cheap. There is no next-sentence objective.
:data:`QUICK` is the quick scale (2 × 96, 150 steps of 32: 8 s on 2 cores, a barely trained
but thoroughly anisotropic encoder), and :data:`FULL` a larger model trained longer (4 × 256,
1,200 steps of 64).

The folder is cached in the kexue cache (``raw-encoder/<key>``) by a digest of the settings,
the corpus and the versions, and written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from kexue import __version__
from kexue._native import cache_dir
from kexue._shared import check_int, check_number
from kexue.data import STS_TASKS, embedded_model_path, load_task, load_tinyshakespeare, quiet_offline_transformers
from kexue.sts import unique_sentences

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerBase

__all__ = ["FULL", "QUICK", "PretrainConfig", "corpus", "pretrain_raw_encoder"]


@dataclass(frozen=True)
class PretrainConfig:
    """A masked-LM pre-training run (BERT's architecture and objective, small).

    Args:
        hidden: the hidden width.
        layers: the number of Transformer layers.
        heads: attention heads per layer (``hidden`` must be a multiple).
        intermediate: the feed-forward width.
        max_length: sentences are truncated to this many word pieces.
        batch_size: sentences per step.
        steps: optimiser steps.
        lr: AdamW's peak learning rate.
        warmup: linear warm-up steps (then linear decay to 0).
        mask_probability: the share of word pieces chosen for prediction.
        seed: initialisation, sentence order and corruption.
    """

    hidden: int = 96
    layers: int = 2
    heads: int = 4
    intermediate: int = 384
    max_length: int = 48
    batch_size: int = 32
    steps: int = 150
    lr: float = 2e-3
    warmup: int = 40
    mask_probability: float = 0.15
    seed: int = 0

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: a field out of range (named in the message).
        """
        for name in ("hidden", "layers", "heads", "intermediate", "max_length", "batch_size", "steps", "warmup"):
            check_int(name, getattr(self, name), 0 if name == "warmup" else 1)
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")
        check_number("lr", self.lr, above=0)
        if not 0 < self.mask_probability < 1:
            raise ValueError(f"mask_probability={self.mask_probability!r} must be in (0, 1)")


QUICK = PretrainConfig()
FULL = PretrainConfig(
    hidden=256, layers=4, heads=4, intermediate=1024, max_length=48, batch_size=64, steps=1200, lr=1e-3, warmup=100
)


def corpus(root: str | os.PathLike | None = None) -> list[str]:
    """Every distinct STS12-16 / STS-B / SICK-R sentence, then the non-empty lines of tinyshakespeare.

    Args:
        root: the data folder (default: kexue's, see :mod:`kexue.data`).

    Returns:
        The sentences, STS/SICK's first (in first-seen order), then tinyshakespeare's lines longer
        than 12 characters that are not already there.
    """
    sentences = unique_sentences({t: load_task(t, root) for t in STS_TASKS})
    seen = set(sentences)
    for line in load_tinyshakespeare(root).splitlines():
        line = line.strip()
        if len(line) > 12 and line not in seen:
            seen.add(line)
            sentences.append(line)
    return sentences


def _cache_key(config: PretrainConfig, sentences: Sequence[str], tokenizer_dir: Path) -> str:
    import transformers  # optional extra: nlp

    h = hashlib.sha256(
        json.dumps(
            {
                "config": asdict(config),
                "code": _digest(Path(__file__)),
                "tokenizer": {p.name: _digest(p) for p in sorted(tokenizer_dir.glob("*vocab*"))},
                "versions": [__version__, torch.__version__, transformers.__version__],
            },
            sort_keys=True,
        ).encode()
    )
    for s in sentences:
        data = s.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _MaskedLM(nn.Module):
    """BERT's encoder plus its masked-LM head (transform, LayerNorm, tied decoder), scoring only
    the chosen positions."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert
        width = bert.config.hidden_size
        self.transform = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=bert.config.layer_norm_eps)
        )
        self.bias = nn.Parameter(torch.zeros(bert.config.vocab_size))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chosen: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[chosen]
        logits = self.transform(hidden) @ self.bert.embeddings.word_embeddings.weight.T + self.bias
        return nn.functional.cross_entropy(logits, targets)


def _mask(
    ids: torch.Tensor,
    special: torch.Tensor,
    config: PretrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's corruption: choose 15 % of the real pieces; 80 % [MASK], 10 % random, 10 % kept."""
    candidates = ~special
    chosen = (torch.rand(ids.shape, generator=g) < config.mask_probability) & candidates
    none = ~chosen.any(dim=1) & candidates.any(dim=1)  # every sequence predicts at least one piece
    if none.any():
        first = candidates.float().argmax(dim=1)
        chosen[none, first[none]] = True
    corrupted = ids.clone()
    roll = torch.rand(ids.shape, generator=g)
    corrupted[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[random] = torch.randint(
        999, tokenizer.vocab_size, (int(random.sum()),), generator=g
    )  # not [PAD]..[unused]
    return corrupted, chosen, ids[chosen]


def pretrain_raw_encoder(
    config: PretrainConfig = QUICK,
    *,
    sentences: Sequence[str] | None = None,
    progress: Callable[[int, float], None] | None = None,
    use_cache: bool | None = None,
) -> Path:
    """Pre-train (or find in the cache) a raw masked-LM encoder; returns its folder.

    Args:
        config: the run (default :data:`QUICK`).
        sentences: the corpus (default :func:`corpus`).
        progress: called after each step with ``(steps done, loss)``.
        use_cache: look up and store the folder in the kexue cache (default: unless
            ``KEXUE_NO_CACHE=1``; without the cache the folder is a fresh temporary one).

    Returns:
        A folder holding the ``BertModel`` (encoder only), the tokenizer and ``pretraining.json``
        (the settings, the loss curve and the seconds).
    """
    from transformers import AutoTokenizer  # optional extra: nlp

    config.validate()
    quiet_offline_transformers()
    sentences = list(corpus() if sentences is None else sentences)
    if len(sentences) < config.batch_size:
        raise ValueError(f"the corpus holds {len(sentences)} sentences, fewer than batch_size={config.batch_size}")
    tokenizer_dir = Path(embedded_model_path())
    use_cache = os.environ.get("KEXUE_NO_CACHE", "") in ("", "0") if use_cache is None else use_cache
    root = cache_dir() / "raw-encoder"
    target = root / _cache_key(config, sentences, tokenizer_dir)
    if use_cache and (target / "pretraining.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bert = _new_bert(config, tokenizer)
    losses, seconds = _train(_MaskedLM(bert).train(), tokenizer, sentences, config, progress)
    if use_cache:
        root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="raw-encoder.tmp-", dir=str(root) if use_cache else None))
    bert.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    log = {"config": asdict(config), "sentences": len(sentences), "losses": losses, "seconds": seconds}
    (tmp / "pretraining.json").write_text(json.dumps(log, indent=1))
    if not use_cache:
        return tmp
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: use its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _new_bert(config: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> BertModel:
    """A freshly initialised ``BertModel`` of ``config``'s size (seeded), for the tokenizer's vocabulary."""
    from transformers import BertConfig, BertModel  # optional extra: nlp

    torch.manual_seed(config.seed)
    return BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=config.intermediate,
            max_position_embeddings=config.max_length,
        )
    )  # its pooler is unused, but AutoModel expects one


def _padded(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention mask)`` of a batch of word-piece id lists, padded on the right."""
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id)
    for row, piece_ids in enumerate(batch):
        ids[row, : len(piece_ids)] = torch.tensor(piece_ids)
    attention = (torch.arange(width)[None] < torch.tensor([len(b) for b in batch])[:, None]).long()
    return ids, attention


def _train(
    model: _MaskedLM,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    config: PretrainConfig,
    progress: Callable[[int, float], None] | None,
) -> tuple[list[float], float]:
    g = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(sentences), generator=g)[
        : config.steps * config.batch_size
    ]  # the sentences the run sees
    encoded = tokenizer([sentences[i] for i in order.tolist()], truncation=True, max_length=config.max_length)[
        "input_ids"
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(
            (s + 1) / max(1, config.warmup), max(0.0, (config.steps - s) / max(1, config.steps - config.warmup))
        ),
    )
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps):
        lo = (step * config.batch_size) % (len(encoded) - config.batch_size + 1)  # past one epoch: around again
        ids, attention = _padded(encoded[lo : lo + config.batch_size], tokenizer.pad_token_id)
        corrupted, chosen, targets = _mask(ids, torch.isin(ids, special), config, tokenizer, g)
        loss = model(corrupted, attention, chosen, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(round(float(loss.detach()), 4))
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"masked-LM loss became {losses[-1]} at step {step}; lower lr={config.lr}")
        if progress is not None:
            progress(step + 1, losses[-1])
    return losses, time.perf_counter() - start
