"""DRY against its plain-Python definition: hand-built sequences, breakers, windows, the prompt,
batches, incremental updates, and inside ``model.generate`` with the KV cache."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList

from kexue.repetition.dry import DRYLogitsProcessor, breaker_sequences
from kexue.repetition.hooks_reference import dry_penalties


def _dense(ref: dict[int, float], vocab: int) -> torch.Tensor:
    out = torch.zeros(vocab)
    for token, amount in ref.items():
        out[token] = amount
    return out


def test_llama_cpp_worked_example() -> None:
    # llama.cpp's comment: "a b c c b c y a b c" has repeat counts 0 0 3 1 0 2 0 0 0 0, so "c" would
    # extend a repeat of 3 and "y" one of 2; "b" (1) is under allowed_length = 2
    ids = torch.tensor([[1, 2, 3, 3, 2, 3, 9, 1, 2, 3]])
    pen = DRYLogitsProcessor(0.8, base=1.75, allowed_length=2, breaker_ids=[]).penalties(ids, 10)[0]
    assert pen[3].item() == pytest.approx(0.8 * 1.75) and pen[9].item() == pytest.approx(0.8)
    assert (pen != 0).sum() == 2
    # a breaker ("y", id 9) between the two copies: nothing repeats across it, so no penalty at all
    ids = torch.tensor([[1, 2, 3, 9, 1, 2, 3]])
    assert DRYLogitsProcessor(1.0, breaker_ids=[[9]]).penalties(ids, 10).abs().sum() == 0
    assert DRYLogitsProcessor(1.0, breaker_ids=[]).penalties(ids, 10)[0, 9].item() == pytest.approx(1.75)


def test_breakers_window_prompt_and_exponent_cap() -> None:
    seq = [5, 1, 2, 3, 4, 1, 2, 3]  # "1 2 3" repeats: 4 follows it, with a repeat of 3
    pen = lambda **kw: DRYLogitsProcessor(1.0, base=2.0, allowed_length=2, **kw).penalties(torch.tensor([seq]), 8)[0]  # noqa: E731
    assert pen(breaker_ids=[])[4].item() == pytest.approx(2.0)
    assert pen(breaker_ids=[[3]]).abs().sum() == 0  # the last token is a breaker: rep_limit 0
    assert pen(breaker_ids=[[2, 3]])[4].item() == 0  # a two-token breaker ends the sequence
    assert pen(breaker_ids=[[4]])[4].item() == 0  # one-token breakers are never penalised
    assert pen(breaker_ids=[], penalty_last_n=6)[4].item() == pytest.approx(
        1.0
    )  # window cuts the earlier copy to "2 3"
    assert pen(breaker_ids=[], prompt_length=2)[4].item() == pytest.approx(1.0)  # the prompt's "5 1" is left out
    assert pen(breaker_ids=[], prompt_length=4).abs().sum() == 0
    huge = (
        DRYLogitsProcessor(1.0, base=100.0, allowed_length=1, breaker_ids=[])
        .penalties(torch.tensor([[7] * 60]), 8)[0, 7]
        .item()
    )
    assert huge == pytest.approx(
        100.0 ** int(88.7228391 / torch.log(torch.tensor(100.0)).item()), rel=1e-5
    )  # capped, finite
    assert DRYLogitsProcessor(0.0, breaker_ids=[]).penalties(torch.tensor([[7] * 10]), 8).abs().sum() == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_incremental_state_equals_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    for trial in range(40):
        T, V = rng.randint(1, 40), 6
        rows = []
        for _ in range(3):
            s = [rng.randrange(V) for _ in range(T)]
            if rng.random() < 0.6 and T > 8:
                k = rng.randint(1, 4)
                s = s[: T // 2] + (s[T // 2 : T // 2 + k] * 40)[: T - T // 2]
            rows.append(s)
        breakers = [(5, ()), (4, (0,)), (4, (0, 1))] if trial % 2 else []
        kw = dict(
            multiplier=rng.choice([0.5, 1.0]),
            base=rng.choice([1.0, 1.75]),
            allowed_length=rng.randint(1, 3),
            penalty_last_n=rng.choice([-1, 5, 12]),
        )
        start = rng.choice([None, 0, 3])
        dry = DRYLogitsProcessor(
            kw["multiplier"],
            base=kw["base"],
            allowed_length=kw["allowed_length"],
            penalty_last_n=kw["penalty_last_n"],
            breaker_ids=[[h, *t] for h, t in breakers],
            prompt_length=start,
        )
        x = torch.tensor(rows)
        for t in range(1, T + 1):  # one call per generated token, as generate makes them
            got = dry.penalties(x[:, :t], V)
            want = torch.stack(
                [_dense(dry_penalties(r[:t], breakers=breakers, start=start or 0, **kw), V) for r in rows]
            )
            assert torch.allclose(got, want, rtol=1e-6), (rows, t, kw, start, breakers)
        fresh = DRYLogitsProcessor(
            kw["multiplier"],
            base=kw["base"],
            allowed_length=kw["allowed_length"],
            penalty_last_n=kw["penalty_last_n"],
            breaker_ids=[[h, *t] for h, t in breakers],
            prompt_length=start,
        )
        assert torch.equal(fresh.penalties(x, V), got)  # rebuilt from the ids = updated step by step


class _ToyTokenizer:
    """Greedy longest-match over a fixed vocabulary of strings (enough for breaker processing)."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.vocab)

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out = []
        while text:
            i = max((i for i, w in enumerate(self.vocab) if text.startswith(w)), key=lambda i: len(self.vocab[i]))
            out.append(i)
            text = text[len(self.vocab[i]) :]
        return out


def test_breaker_strings_are_tokenised_as_llama_cpp_does() -> None:
    vocab = ["a", "b", "\n", "x\n", "ab", "xa", "c", "Note", ":", "No", "te:"]
    tok = _ToyTokenizer(vocab)
    got = set(breaker_sequences(tok, ["\n", "ab", "Note:"]))
    ids = {w: i for i, w in enumerate(vocab)}
    want = {
        (ids["\n"], ()),
        (ids["x\n"], ()),  # texts containing "\n"
        (ids["ab"], ()),
        (ids["a"], (ids["b"],)),
        (ids["xa"], (ids["b"],)),  # "a" and "xa" end with the prefix "a" of "ab"
        (ids["Note"], (ids[":"],)),
        (ids["No"], (ids["te:"],)),
    }  # "Note" + ":", "No" + "te:"
    assert got == want
    with pytest.raises(ValueError, match="tokenizer="):
        DRYLogitsProcessor(1.0)  # string breakers need the tokenizer
    with pytest.raises(TypeError, match="list of strings"):
        breaker_sequences(tok, "\n")
    for bad, name in (
        (dict(multiplier=-1.0), "multiplier"),
        (dict(multiplier=1.0, base=0.5), "base"),
        (dict(multiplier=1.0, allowed_length=0), "allowed_length"),
        (dict(multiplier=1.0, penalty_last_n=-2), "penalty_last_n"),
    ):
        with pytest.raises(ValueError, match=name):
            DRYLogitsProcessor(**bad, breaker_ids=[])


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = (
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n"
    ) * 20
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(
        [text],
        trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    return PreTrainedTokenizerFast(tokenizer_object=core)


def test_inside_generate_with_the_kv_cache_equals_the_definition() -> None:
    tok = _bpe_tokenizer()
    torch.manual_seed(0)
    model = (
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128))
        .double()
        .eval()
    )
    rows = [tok.encode("First Citizen:\nSpeak, speak.\n"), tok.encode("All:\nResolved, rather to die?\n")]
    width = min(len(r) for r in rows)
    prompt = torch.tensor([r[:width] for r in rows])
    for prompt_length in (None, width):
        dry = DRYLogitsProcessor(0.8, base=1.75, allowed_length=2, tokenizer=tok, prompt_length=prompt_length)
        assert any(not t for _, t in dry.breakers)  # "\n" and ":" tokens are one-token breakers
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=40,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([dry]),
        )
        ids = prompt.clone()  # the definition, step by step, without a cache
        with torch.no_grad():
            for _ in range(40):
                logits = model(ids).logits[:, -1].float()
                pen = torch.stack(
                    [
                        _dense(
                            dry_penalties(r, multiplier=0.8, breakers=dry.breakers, start=prompt_length or 0),
                            logits.shape[1],
                        )
                        for r in ids.tolist()
                    ]
                )
                ids = torch.cat([ids, (logits - pen).argmax(dim=1, keepdim=True)], dim=1)
        assert torch.equal(out, ids)
    plain = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False, pad_token_id=0
    )
    assert not torch.equal(plain, out)  # DRY changed the greedy continuation of this looping model


def test_the_same_ids_with_a_wider_vocabulary_do_not_crash() -> None:
    dry = DRYLogitsProcessor(multiplier=1.0, allowed_length=2, breaker_ids=[])
    ids = torch.tensor([[1, 2, 3, 1, 2]])
    first = dry(ids, torch.zeros(1, 8))
    wider = dry(ids, torch.zeros(1, 12))  # the same state asked again, more logits
    assert torch.equal(wider[:, :8], first) and wider.shape == (1, 12)


def test_dry_on_p_refuses_a_vocabulary_it_cannot_afford() -> None:
    import scipy.sparse as sp

    from kexue.repetition.analysis import DRY_MAX_TOKENS, dry_penalised, r_with_dry

    big = sp.identity(DRY_MAX_TOKENS + 1, format="csr")
    with pytest.raises(ValueError, match=f"P has {DRY_MAX_TOKENS + 1} tokens"):
        dry_penalised(big, "greedy", delta=1.0)
    with pytest.raises(ValueError, match="at most"):
        r_with_dry(big, "greedy", multiplier=1.0)
