"""GrowthCallback: growing inside one Trainer.train() run equals growing by hand between two loops."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from kexue.growth import deepen, transfer_adam_state, widen
from kexue.growth.callback import GrowthCallback

BATCH, STEPS, AT = 4, 6, 3


def _small() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).double()


class _Rows(torch.utils.data.IterableDataset):
    """Fixed token rows in a fixed order (no sampler: the same batches for the Trainer and the loop)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __iter__(self):
        for row in self.rows:
            yield {"input_ids": row, "labels": row}


def _rows(accumulate: int = 1) -> torch.Tensor:
    return torch.randint(0, 32, (STEPS * BATCH * accumulate, 10), generator=torch.Generator().manual_seed(1))


def _args(out, accumulate: int = 1, **overrides) -> TrainingArguments:
    # Adam with a negligible eps is invariant to the loss's scale (the Trainer normalises by the
    # label count of the whole accumulated batch; the loop below by each micro-batch's mean)
    settings = dict(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        adam_epsilon=1e-30,
        max_grad_norm=0.0,
        optim="adamw_torch",
        gradient_accumulation_steps=accumulate,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        logging_strategy="no",
        seed=0,
    )
    return TrainingArguments(**{**settings, **overrides})


def _by_hand(model, grow, rows: torch.Tensor, accumulate: int = 1, lr_scale: float = 1.0):
    """Train AT steps, grow, carry Adam's state through transfer_adam_state, train the rest."""

    def adam(m, lr):
        return torch.optim.AdamW(m.parameters(), lr=lr, eps=1e-30, weight_decay=0.0)

    def steps(m, opt, batches):
        for i in range(0, len(batches), accumulate):
            for micro in batches[i : i + accumulate]:
                m(input_ids=micro, labels=micro).loss.backward()
            opt.step()
            opt.zero_grad()

    batches = list(rows.split(BATCH))
    opt = adam(model, 1e-2)
    steps(model, opt, batches[: AT * accumulate])
    large = grow(model)
    large_opt = adam(large, 1e-2 * lr_scale)
    transfer_adam_state(opt, model, large_opt, large, grow)
    steps(large, large_opt, batches[AT * accumulate :])
    return large


def _assert_same_weights(a, b, tol: float = 1e-9) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.allclose(pa[name], pb[name], rtol=0, atol=tol), name


@pytest.mark.parametrize(
    ("grow", "accumulate", "lr_scale"),
    [
        (lambda m: widen(m, 2), 1, 1.0),
        (lambda m: widen(m, 2, noise=0.5, seed=3), 2, 0.5),  # noise, gradient accumulation and a new rate
        (lambda m: deepen(m, [0, 1]), 1, 1.0),
    ],
)
def test_growth_inside_trainer_equals_growing_by_hand(tmp_path, grow, accumulate, lr_scale) -> None:
    rows = _rows(accumulate)
    expected = _by_hand(_small(), grow, rows, accumulate, lr_scale)
    model = _small()
    callback = GrowthCallback(grow, at_step=AT, lr_scale=lr_scale)
    Trainer(model=model, args=_args(tmp_path, accumulate), train_dataset=_Rows(rows), callbacks=[callback]).train()
    assert callback.grown_at == AT
    assert model.config.hidden_size == expected.config.hidden_size
    assert model.config.num_hidden_layers == expected.config.num_hidden_layers
    _assert_same_weights(model, expected)


def test_without_state_transfer_the_run_differs(tmp_path) -> None:
    rows = _rows()
    expected = _by_hand(_small(), lambda m: widen(m, 2), rows)
    model = _small()
    callback = GrowthCallback(lambda m: widen(m, 2), at_step=AT, transfer_optimizer_state=False)
    Trainer(model=model, args=_args(tmp_path), train_dataset=_Rows(rows), callbacks=[callback]).train()
    worst = max(
        float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), expected.parameters(), strict=True)
    )
    assert worst > 1e-4  # fresh moments: another trajectory (the transfer is what the test above checks)


def test_growth_keeps_the_function_and_the_decay_groups(tmp_path) -> None:
    seen = {}

    class Probe(GrowthCallback):
        def grow_in_place(self, model, optimizer=None, lr_scheduler=None):
            ids = torch.arange(10).view(1, -1) % 32
            with torch.no_grad():
                before = model(input_ids=ids).logits
            super().grow_in_place(model, optimizer, lr_scheduler)
            with torch.no_grad():
                seen["change"] = float((model(input_ids=ids).logits - before).abs().max())
            names = {id(p): n for n, p in model.named_parameters()}
            seen["groups"] = [{names[id(p)] for p in g["params"]} for g in optimizer.param_groups]
            seen["weight_decay"] = [g["weight_decay"] for g in optimizer.param_groups]

    model = _small()
    Trainer(
        model=model,
        args=_args(tmp_path, weight_decay=0.1),
        train_dataset=_Rows(_rows()),
        callbacks=[Probe(lambda m: deepen(m, [1]), at_step=AT)],
    ).train()
    assert seen["change"] < 1e-12
    decay = seen["groups"][seen["weight_decay"].index(0.1)]
    no_decay = seen["groups"][seen["weight_decay"].index(0.0)]
    assert "model.layers.2.mlp.up_proj.weight" in decay  # the inserted block joins its role's groups
    assert "model.layers.2.input_layernorm.weight" in no_decay
    assert decay | no_decay == {n for n, _ in model.named_parameters()}


def test_resuming_after_the_growth_step_continues_the_same_run(tmp_path) -> None:
    rows = _rows()
    grow = lambda m: widen(m, 2)  # noqa: E731
    straight = _small()
    Trainer(
        model=straight, args=_args(tmp_path / "a"), train_dataset=_Rows(rows), callbacks=[GrowthCallback(grow, AT)]
    ).train()
    first = _small()
    Trainer(
        model=first,
        args=_args(tmp_path / "b", save_strategy="steps", save_steps=AT + 1),
        train_dataset=_Rows(rows),
        callbacks=[GrowthCallback(grow, AT)],
    ).train()
    checkpoint = tmp_path / "b" / f"checkpoint-{AT + 1}"
    callback = GrowthCallback(grow, AT)
    resumed = callback.model_for_checkpoint(_small(), checkpoint)
    assert resumed.config.hidden_size == 32
    Trainer(model=resumed, args=_args(tmp_path / "b"), train_dataset=_Rows(rows), callbacks=[callback]).train(
        resume_from_checkpoint=str(checkpoint)
    )
    _assert_same_weights(resumed, straight)
    before = GrowthCallback(grow, AT + 2).model_for_checkpoint(_small(), checkpoint)
    assert before.config.hidden_size == 16  # a checkpoint from before the growth step: the small shape


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="grow must be a function"):
        GrowthCallback("widen", 3)
    with pytest.raises(ValueError, match="at_step=0"):
        GrowthCallback(lambda m: m, 0)
    with pytest.raises(ValueError, match="lr_scale=-1"):
        GrowthCallback(lambda m: m, 3, lr_scale=-1)
    with pytest.raises(FileNotFoundError, match=r"trainer_state.json"):
        GrowthCallback(lambda m: m, 3).model_for_checkpoint(_small(), "/nonexistent")
    copy.deepcopy(GrowthCallback(lambda m: m, 3))  # callbacks are copied by some trainers


def _llrd_trainer(model, out, callback):
    """A Trainer whose optimizer gives each layer its own learning rate (layer-wise decay)."""
    groups = [
        {"params": [p for n, p in model.named_parameters() if f"layers.{i}." in n], "lr": 10.0 ** -(i + 2)}
        for i in range(2)
    ]
    groups.append(
        {"params": [p for n, p in model.named_parameters() if "layers." not in n and p.requires_grad], "lr": 1e-3}
    )
    optimizer = torch.optim.AdamW(groups, eps=1e-30, weight_decay=0.0)
    return Trainer(
        model=model, args=_args(out), train_dataset=_Rows(_rows()), callbacks=[callback], optimizers=(optimizer, None)
    )


def test_per_layer_learning_rates_and_frozen_parameters_survive_growth(tmp_path) -> None:
    model = _small()
    model.model.embed_tokens.weight.requires_grad_(False)
    frozen = model.model.embed_tokens.weight.detach().clone()
    trainer = _llrd_trainer(model, tmp_path, GrowthCallback(lambda m: widen(m, 2), at_step=AT))
    trainer.train()
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {names[id(p)]: g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert rates["model.layers.0.mlp.up_proj.weight"] == 1e-2 and rates["model.layers.1.mlp.up_proj.weight"] == 1e-3
    assert "model.embed_tokens.weight" not in rates and not model.model.embed_tokens.weight.requires_grad
    assert torch.equal(
        model.model.embed_tokens.weight, widen(_small(), 2).model.embed_tokens.weight.detach()
    )  # never moved
    assert frozen.shape[1] * 2 == model.model.embed_tokens.weight.shape[1]


def test_an_inserted_layer_whose_role_spans_groups_is_refused_and_nothing_changes(tmp_path) -> None:
    model = _small()
    trainer = _llrd_trainer(model, tmp_path, GrowthCallback(lambda m: deepen(m, [0]), at_step=AT))
    with pytest.raises(ValueError, match=r"new parameter model.layers.1.*spans several groups"):
        trainer.train()
    assert model.config.num_hidden_layers == 2  # the model and the optimizer are as they were
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_mixture_of_experts_and_tied_heads_grow_inside_the_trainer(tmp_path) -> None:
    from kexue.growth import add_experts
    from kexue.growth.zoo import tiny_model

    moe = tiny_model("mixtral").double()
    moe.config.output_router_logits = True  # the auxiliary loss reads num_experts from the model: it must follow
    rows = torch.randint(0, 64, (STEPS * BATCH, 10), generator=torch.Generator().manual_seed(2))
    Trainer(
        model=moe,
        args=_args(tmp_path / "moe"),
        train_dataset=_Rows(rows),
        callbacks=[GrowthCallback(lambda m: add_experts(m, 2), AT)],
    ).train()
    assert moe.num_experts == 8 and moe.config.num_local_experts == 8
    tied = tiny_model("llama-tied").double()
    Trainer(
        model=tied,
        args=_args(tmp_path / "tied"),
        train_dataset=_Rows(rows),
        callbacks=[GrowthCallback(lambda m: widen(m, 2), AT)],
    ).train()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight and tied.config.hidden_size == 32
