"""kexue's cached loss in sentence-transformers: gradients against the peer's own losses, the full
batch with dropout on, MatryoshkaLoss, token budgets, DDP's reductions, and the trainer end to end."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses

from kexue.contrastive.st_loss import CachedContrastiveLoss, plan_micro_batches
from kexue.contrastive.verify import parameter_group, verify_cached_gradients

WORDS = (
    "the cat sat on a mat while dogs ran far away under bright summer skies and cold rain fell on the old town "
    "as people walked home"
).split()


def _columns(n: int, count: int, seed: int = 0) -> list[list[str]]:
    """``count`` columns of ``n`` sentences of 2 to 19 words (lengths vary, as in real data)."""
    g = torch.Generator().manual_seed(seed)

    def sentence() -> str:
        k = int(torch.randint(2, 20, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))

    return [[sentence() for _ in range(n)] for _ in range(count)]


@pytest.fixture
def model(tiny_sentence_model: str) -> SentenceTransformer:
    st = SentenceTransformer(tiny_sentence_model, device="cpu")
    st.max_seq_length = 24
    return st


def _features(model: SentenceTransformer, columns: list[list[str]]) -> list[dict]:
    return [model.preprocess(column) for column in columns]


def _gradient(model: SentenceTransformer, loss, columns: list[list[str]]) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    value = loss(_features(model, columns), None)
    value.backward()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
    return float(value), flat


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("negatives", [0, 2])
@pytest.mark.parametrize("split", ["count", "tokens", "count-unsorted"])
def test_gradients_equal_sentence_transformers_cached_and_plain_losses(model, negatives: int, split: str) -> None:
    model.eval()  # dropout off: every procedure sees the same function
    columns = _columns(13, 2 + negatives)
    kwargs = {"micro_batch_tokens": 60} if split == "tokens" else {"micro_batch_size": 4}
    ours = _gradient(model, CachedContrastiveLoss(model, sort_by_length=split != "count-unsorted", **kwargs), columns)
    peer_cached = _gradient(model, st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4), columns)
    peer_plain = _gradient(model, st_losses.MultipleNegativesRankingLoss(model), columns)
    assert ours[0] == pytest.approx(peer_plain[0], rel=1e-6) and ours[0] == pytest.approx(peer_cached[0], rel=1e-6)
    assert _rel(ours[1], peer_cached[1]) <= 1e-5 and _rel(ours[1], peer_plain[1]) <= 1e-5


def test_symmetric_and_dot_equal_the_peer(model) -> None:
    from sentence_transformers.util import dot_score

    model.eval()
    columns = _columns(10, 2, seed=1)
    ours = _gradient(model, CachedContrastiveLoss(model, symmetric=True, micro_batch_size=3), columns)
    peer = _gradient(model, st_losses.CachedMultipleNegativesSymmetricRankingLoss(model, mini_batch_size=3), columns)
    assert ours[0] == pytest.approx(peer[0], rel=1e-6) and _rel(ours[1], peer[1]) <= 1e-5
    ours = _gradient(model, CachedContrastiveLoss(model, similarity="dot", scale=1.0, micro_batch_size=3), columns)
    peer = _gradient(model, st_losses.MultipleNegativesRankingLoss(model, scale=1.0, similarity_fct=dot_score), columns)
    assert ours[0] == pytest.approx(peer[0], rel=1e-6) and _rel(ours[1], peer[1]) <= 1e-5


@pytest.mark.parametrize(
    "options",
    [{}, {"learnable_scale": True}, {"tiled": True, "tile": 5}, {"symmetric": True, "micro_batch_tokens": 50}],
)
def test_with_dropout_the_gradient_is_the_full_batch_one(model, options: dict) -> None:
    model.train()  # dropout on: replayed masks make the cached gradient the full-batch one
    columns = _columns(12, 3, seed=2)
    loss = CachedContrastiveLoss(model, micro_batch_size=4, **options)
    check = verify_cached_gradients(model, columns, loss, tolerance=1e-5)
    assert check.passed, check.errors
    assert check.micro_batches >= 9 and check.loss_cached == pytest.approx(check.loss_full, rel=1e-6)
    assert {"0.model.embeddings", "0.model.encoder.layer.0", "0.model.encoder.layer.1"} <= set(check.errors)
    if options.get("learnable_scale"):
        assert "loss.info_nce" in check.errors
        loss.zero_grad()
        loss(_features(model, columns)).backward()
        assert float(loss.info_nce.log_scale.grad.abs()) > 1e-4  # the temperature does learn


def test_without_rng_replay_dropout_breaks_exactness(model) -> None:
    model.train()
    check = verify_cached_gradients(
        model, _columns(12, 2, seed=3), CachedContrastiveLoss(model, micro_batch_size=4, replay_rng=False)
    )
    assert not check.passed and check.max_error > 1e-2  # the article's admitted limit, which replay removes


def test_verify_leaves_gradients_and_rng_as_found(model) -> None:
    model.train()
    first = next(model.parameters())
    first.grad = torch.full_like(first, 7.0)
    state = torch.get_rng_state()
    verify_cached_gradients(model, _columns(6, 2), CachedContrastiveLoss(model, micro_batch_size=2))
    assert torch.equal(first.grad, torch.full_like(first, 7.0)) and torch.equal(torch.get_rng_state(), state)


def test_verify_on_an_embedding_loss_and_plain_encoder() -> None:
    from kexue.contrastive.losses import InfoNCE

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 8)).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    check = verify_cached_gradients(
        encoder, [x, x + 0.1], InfoNCE(temperature=0.1, learnable=True).double(), micro_batch_size=3, tolerance=1e-12
    )
    assert check.passed and set(check.errors) == {"0", "2", "loss"} and check.micro_batches == 14
    with pytest.raises(ValueError, match="micro_batch_size is required"):
        verify_cached_gradients(encoder, [x, x], InfoNCE(temperature=0.1))


def test_parameter_groups() -> None:
    assert parameter_group("0.auto_model.encoder.layer.3.attention.self.query.weight") == "0.auto_model.encoder.layer.3"
    assert parameter_group("0.auto_model.embeddings.word_embeddings.weight") == "0.auto_model.embeddings"
    assert parameter_group("loss.info_nce.log_scale") == "loss.info_nce"


def test_matryoshka_composes(model) -> None:
    model.eval()
    columns = _columns(10, 2, seed=4)
    dims = [32, 16, 8]
    ours = _gradient(
        model,
        st_losses.MatryoshkaLoss(
            model, CachedContrastiveLoss(model, micro_batch_size=3), dims, matryoshka_weights=[1.0, 0.5, 0.25]
        ),
        columns,
    )
    peer = _gradient(
        model,
        st_losses.MatryoshkaLoss(
            model, st_losses.MultipleNegativesRankingLoss(model), dims, matryoshka_weights=[1.0, 0.5, 0.25]
        ),
        columns,
    )
    assert ours[0] == pytest.approx(peer[0], rel=1e-6) and _rel(ours[1], peer[1]) <= 1e-5


def test_token_budget_plan(model) -> None:
    feature = model.preprocess(_columns(30, 1, seed=5)[0])
    lengths = feature["attention_mask"].sum(1)
    plan = plan_micro_batches(feature, micro_batch_size=4, micro_batch_tokens=64)
    assert sorted(torch.cat(plan.groups).tolist()) == list(range(30))
    for group, width in zip(plan.groups, plan.widths, strict=True):
        assert width == int(lengths[group].max())
        assert len(group) == 1 or len(group) * width <= 64
    assert torch.equal(torch.cat(plan.groups)[plan.inverse], torch.arange(30))
    widths = list(plan.widths)
    assert widths == sorted(widths, reverse=True)  # longest first
    unsorted = plan_micro_batches(feature, micro_batch_size=4, sort_by_length=False)
    assert [g.tolist() for g in unsorted.groups][:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    padded_sorted = sum(len(g) * w for g, w in zip(plan.groups, plan.widths, strict=True))
    padded_plain = sum(len(g) * w for g, w in zip(unsorted.groups, unsorted.widths, strict=True))
    assert padded_sorted < padded_plain


def test_evaluation_mode_only_computes_the_loss(model) -> None:
    loss = CachedContrastiveLoss(model, micro_batch_size=4)
    columns = _columns(8, 2)
    with torch.no_grad():
        value = loss(_features(model, columns))
    assert value.grad_fn is None and value.dim() == 0
    model.eval()
    assert float(value) == pytest.approx(
        _gradient(model, st_losses.MultipleNegativesRankingLoss(model), columns)[0], rel=1e-6
    )


def test_ddp_reduces_once_per_step(model, tmp_path) -> None:
    """Under DDP every micro-batch's backward but the step's last runs in no_sync: one reduction per step."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model.train()
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)  # BERT's pooler is unused
        syncing = []  # per backward: whether DDP would reduce
        first = next(model.parameters())  # its gradient hook fires once per micro-batch backward
        first.register_hook(lambda g: syncing.append(ddp.require_backward_grad_sync))
        loss = CachedContrastiveLoss(model, micro_batch_size=3)
        loss.model = ddp  # what SentenceTransformerTrainer does with a wrapped model
        columns = _columns(12, 2, seed=6)
        loss([model.preprocess(c) for c in columns]).backward()
        assert syncing == [False] * 7 + [True]  # 8 micro-batches (4 per column), reduced once, at the last
        syncing.clear()
        distributed = CachedContrastiveLoss(model, micro_batch_size=3, distributed=True)
        distributed.model = ddp
        distributed([model.preprocess(c) for c in columns]).backward()
        assert syncing == [False] * 8  # gathered negatives: kexue sums the gradients itself, once
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: CachedContrastiveLoss(m, micro_batch_size=0), "micro_batch_size=0"),
        (lambda m: CachedContrastiveLoss(m, micro_batch_tokens=-5), "micro_batch_tokens=-5"),
        (lambda m: CachedContrastiveLoss(m, scale=0.0), "scale=0.0"),
        (lambda m: CachedContrastiveLoss(m, sort_by_length="yes"), "sort_by_length='yes'"),
        (lambda m: CachedContrastiveLoss(m, similarity="l2"), "similarity='l2'"),
        (lambda m: CachedContrastiveLoss(3), "model must be a SentenceTransformer"),
        (lambda m: CachedContrastiveLoss(m)([m.preprocess(["one column"])]), "needs an anchor and a positive column"),
        (
            lambda m: CachedContrastiveLoss(m, distributed=True)([m.preprocess(["a"]), m.preprocess(["b"])]),
            "init_process_group",
        ),
    ],
)
def test_errors_name_the_argument(model, call, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call(model)


def test_trainer_end_to_end_saves_reloads_and_evaluates(model, tmp_path) -> None:
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    anchors, positives, negatives = _columns(32, 3, seed=7)
    data = Dataset.from_dict({"anchor": anchors, "positive": positives, "negative": negatives})
    loss = CachedContrastiveLoss(model, micro_batch_size=4, learnable_scale=True)
    before = float(loss.info_nce.log_scale)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=16,
        max_steps=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        seed=0,
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    result = trainer.train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    assert float(loss.info_nce.log_scale) != before  # the temperature trained with the model
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    sentences = anchors[:5]
    torch.testing.assert_close(
        reloaded.encode(sentences, convert_to_tensor=True), model.encode(sentences, convert_to_tensor=True)
    )
    from kexue.data import SentencePairs, load_stsb
    from kexue.sts import cosine_spearman, sentence_transformer_encoder

    stsb = load_stsb("test")
    head = SentencePairs("sts-b head", stsb.sentences1[:200], stsb.sentences2[:200], stsb.scores[:200])
    score = cosine_spearman(sentence_transformer_encoder(reloaded), head)
    assert -100.0 <= score <= 100.0


def test_two_gloo_processes_give_the_global_batch_gradient(tiny_sentence_model: str) -> None:
    """distributed=True under torchrun: plain and DDP-wrapped models end with the single-process
    gradient of the global batch (dropout on), after one all-reduce per step."""
    from kexue.contrastive._torchrun_st_check import launch

    result = launch(tiny_sentence_model, nproc=2, batch=18, micro=4)
    assert result["shards"] == [6, 12]
    for wrap in ("plain", "ddp"):
        assert result[f"{wrap}_grad_rel_err"] <= 1e-5, result
        assert result[f"{wrap}_loss_abs_err"] <= 1e-5, result
        assert result[f"{wrap}_all_reduces"] == 1, result


@pytest.mark.slow
def test_trainer_on_the_embedded_model_saves_reloads_and_evaluates_stsb(tmp_path) -> None:
    """The issue's end-to-end run: all-MiniLM-L6-v2 in SentenceTransformerTrainer with kexue's loss."""
    pytest.importorskip("datasets")
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from kexue.data import SentencePairs, embedded_model_path, load_stsb
    from kexue.sts import cosine_spearman, sentence_transformer_encoder

    train = load_stsb("train")
    pairs = [(a, b) for a, b, s in zip(train.sentences1, train.sentences2, train.scores, strict=True) if s >= 4.0][:64]
    model = SentenceTransformer(str(embedded_model_path()), device="cpu")
    test = load_stsb("test")
    head = SentencePairs("sts-b head", test.sentences1[:300], test.sentences2[:300], test.scores[:300])
    before = cosine_spearman(sentence_transformer_encoder(model), head)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=32,
        max_steps=2,
        learning_rate=1e-5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    data = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [b for _, b in pairs]})
    SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, loss=CachedContrastiveLoss(model, micro_batch_size=8)
    ).train()
    model.save(str(tmp_path / "saved"))
    after = cosine_spearman(
        sentence_transformer_encoder(SentenceTransformer(str(tmp_path / "saved"), device="cpu")), head
    )
    assert after > before - 1.0  # two small steps on paraphrase pairs keep (or improve) the score
    assert after > 70.0


class _BagOfWords(torch.nn.Module):
    """A dropout bag-of-embeddings encoder on tokenised features (no host syncs of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.drop = torch.nn.Embedding(40, 8), torch.nn.Dropout(0.1)

    def forward(self, features: dict) -> dict:
        mask = features["attention_mask"].unsqueeze(-1).float()
        h = self.drop(self.embed(features["input_ids"]))
        return {"sentence_embedding": (h * mask).sum(1) / mask.sum(1)}


def _bag_features(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n,), generator=g)
    mask = (torch.arange(8) < lengths[:, None]).long()  # right-padded
    return {"input_ids": torch.randint(0, 40, (n, 8), generator=g) * mask, "attention_mask": mask}


@pytest.mark.parametrize("tokens", [None, 20])
def test_no_host_sync_per_micro_batch(tokens: int | None) -> None:
    from device_contract import count_host_syncs

    torch.manual_seed(0)
    encoder = _BagOfWords()
    columns = [_bag_features(24, 1), _bag_features(24, 2)]
    counts = []
    for micro in (12, 2):
        loss = CachedContrastiveLoss(encoder, micro_batch_size=micro, micro_batch_tokens=tokens)
        with count_host_syncs() as forward:
            value = loss(columns)
        with count_host_syncs() as replay:
            value.backward()
        assert replay == []  # the grad pass (step 3) waits for nothing
        counts.append(len(forward))
    # the plan reads each column's lengths once, the loss validates once: the same however many micro-batches
    assert counts[0] == counts[1] == len(columns) + 2
