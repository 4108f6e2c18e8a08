"""Every subcommand under bad input: exit 2, one line on stderr naming the problem, nothing left behind.

The cases are one table (CASES) so the list is visible. Each runs the ``kexue`` entry point
(``kexue.cli.main``, what the console script calls) inside a scratch folder holding the bad
inputs; afterwards the folder must hold exactly what it held before: no empty or half-written
output file or folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kexue.cli import main

_BINARY = bytes(range(256)) * 8


def _tiny_checkpoint(folder: Path, family: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    if family == "bloom":  # a family kexue does not grow (ALiBi, fused per-head QKV)
        config = transformers.BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2)
        model = transformers.BloomForCausalLM(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bad (and a few good) inputs every case refers to by name."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("\n  \n\n")
    (root / "binary.bin").write_bytes(_BINARY)
    (root / "one.txt").write_text("only one sentence\n")
    (root / "sentences.txt").write_text("a first sentence\na second one\na third\n")
    (root / "notab.tsv").write_text("anchor without a positive\nanother line\n")
    (root / "pairs.tsv").write_text("a\tb\nc\td\ne\tf\n")
    (root / "fake.safetensors").write_text(json.dumps({"kernel": [1, 2, 3]}))
    (root / "other.safetensors").write_bytes(b"")
    _whitening_file(root / "w.safetensors")
    data = (root / "w.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "no-config").mkdir()
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text("{not json")
    _tiny_checkpoint(root / "bloom", "bloom")
    _tiny_checkpoint(root / "llama", "llama")
    truncated = root / "llama-truncated"
    truncated.mkdir()
    (truncated / "config.json").write_bytes((root / "llama" / "config.json").read_bytes())
    weights = (root / "llama" / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    (root / "existing").mkdir()
    (root / "a-file").write_text("not a folder")
    return root


def _whitening_file(path: Path) -> None:
    import numpy as np

    from kexue.whitening import Whitening

    Whitening().fit(np.random.default_rng(0).standard_normal((50, 4))).save(path)


# (id, argv, a fragment the one stderr line must contain)
CASES = [
    # kexue reproduce / bench
    ("reproduce-unknown-technique", ["reproduce", "nonsense"], "unknown technique 'nonsense'"),
    (
        "reproduce-out-is-a-file",
        ["reproduce", "orthogonal", "--out", "a-file"],
        "--out 'a-file' is not a writable directory",
    ),
    (
        "reproduce-data-missing",
        ["reproduce", "orthogonal", "--data", "nowhere", "--out", "new-out"],
        "--data nowhere: no such folder",
    ),
    ("reproduce-seed-not-int", ["reproduce", "orthogonal", "--seed", "x"], "argument --seed: invalid int value"),
    (
        "bench-repeats-0",
        ["bench", "orthogonal", "--repeats", "0", "--out", "new-out"],
        "--repeats 0 must be at least 1",
    ),
    ("bench-device", ["bench", "orthogonal", "--device", "tpu", "--out", "new-out"], "--device 'tpu'"),
    # kexue grow
    ("grow-missing-model", ["grow", "nowhere", "-o", "new-out", "--width", "2"], "nowhere"),
    ("grow-no-config", ["grow", "no-config", "-o", "new-out", "--width", "2"], "no-config has no config.json"),
    ("grow-corrupt-config", ["grow", "bad-config", "-o", "new-out", "--width", "2"], "bad-config"),
    ("grow-unsupported-family", ["grow", "bloom", "-o", "new-out", "--width", "2"], "bloom"),
    ("grow-truncated-weights", ["grow", "llama-truncated", "-o", "new-out", "--width", "2"], "llama-truncated"),
    ("grow-out-exists", ["grow", "llama", "-o", "existing", "--width", "2"], "--out existing exists"),
    (
        "grow-out-under-a-file",
        ["grow", "llama", "-o", "a-file/out", "--width", "2"],
        "its parent a-file is not an existing folder",
    ),
    ("grow-width-0", ["grow", "llama", "-o", "new-out", "--width", "0"], "--width=0 must be a positive integer"),
    ("grow-nothing-to-do", ["grow", "llama", "-o", "new-out"], "nothing to do"),
    ("grow-noise-nan", ["grow", "llama", "-o", "new-out", "--width", "2", "--noise", "nan"], "--noise nan"),
    ("grow-ffn-too-small", ["grow", "llama", "-o", "new-out", "--ffn", "8"], "8"),
    # kexue whiten
    ("whiten-fit-missing-corpus", ["whiten", "fit", "--corpus", "nowhere.txt", "-o", "w2.safetensors"], "nowhere.txt"),
    ("whiten-fit-empty-corpus", ["whiten", "fit", "--corpus", "empty.txt", "-o", "w2.safetensors"], "empty.txt"),
    ("whiten-fit-binary-corpus", ["whiten", "fit", "--corpus", "binary.bin", "-o", "w2.safetensors"], "binary.bin"),
    (
        "whiten-fit-k-0",
        ["whiten", "fit", "--corpus", "sentences.txt", "-k", "0", "-o", "w2.safetensors"],
        "n_components=0",
    ),
    (
        "whiten-fit-shrinkage",
        ["whiten", "fit", "--corpus", "sentences.txt", "--shrinkage", "2", "-o", "w2.safetensors"],
        "shrinkage",
    ),
    (
        "whiten-fit-out-folder-missing",
        ["whiten", "fit", "--corpus", "sentences.txt", "-o", "nowhere/w.safetensors"],
        "nowhere",
    ),
    (
        "whiten-fit-batch-0",
        ["whiten", "fit", "--corpus", "sentences.txt", "--batch-size", "0", "-o", "w2.safetensors"],
        "--batch-size",
    ),
    ("whiten-eval-missing-file", ["whiten", "eval", "--whitening", "nowhere.safetensors"], "nowhere.safetensors"),
    (
        "whiten-eval-json-file",
        ["whiten", "eval", "--whitening", "fake.safetensors"],
        "fake.safetensors is not a kexue whitening file",
    ),
    (
        "whiten-eval-empty-file",
        ["whiten", "eval", "--whitening", "other.safetensors"],
        "other.safetensors is not a kexue whitening file",
    ),
    (
        "whiten-eval-truncated",
        ["whiten", "eval", "--whitening", "truncated.safetensors"],
        "truncated.safetensors is not a kexue whitening file",
    ),
    ("whiten-eval-binary", ["whiten", "eval", "--whitening", "binary.bin"], "binary.bin is not a kexue whitening file"),
    ("whiten-eval-unknown-task", ["whiten", "eval", "--tasks", "STS99"], "unknown task 'STS99'"),
    ("whiten-eval-bad-pooling", ["whiten", "eval", "--pooling", "max"], "max"),
    # kexue train-embedder
    ("train-missing-pairs", ["train-embedder", "--pairs", "nowhere.tsv", "-o", "new-out", "--no-eval"], "nowhere.tsv"),
    (
        "train-empty-sentences",
        ["train-embedder", "--sentences", "empty.txt", "-o", "new-out", "--no-eval"],
        "empty.txt",
    ),
    (
        "train-blank-sentences",
        ["train-embedder", "--sentences", "blank.txt", "-o", "new-out", "--no-eval"],
        "blank.txt",
    ),
    ("train-one-sentence", ["train-embedder", "--sentences", "one.txt", "-o", "new-out", "--no-eval"], "at least 2"),
    (
        "train-binary-sentences",
        ["train-embedder", "--sentences", "binary.bin", "-o", "new-out", "--no-eval"],
        "binary.bin",
    ),
    (
        "train-pairs-without-tabs",
        ["train-embedder", "--pairs", "notab.tsv", "-o", "new-out", "--no-eval"],
        "notab.tsv line 1",
    ),
    (
        "train-micro-above-batch",
        [
            "train-embedder",
            "--pairs",
            "pairs.tsv",
            "-o",
            "new-out",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "8",
            "--no-eval",
        ],
        "micro_batch_size=8 must not exceed batch_size=4",
    ),
    (
        "train-lr-negative",
        ["train-embedder", "--pairs", "pairs.tsv", "-o", "new-out", "--lr", "-1", "--no-eval"],
        "lr=-1",
    ),
    (
        "train-warmup-1",
        ["train-embedder", "--pairs", "pairs.tsv", "-o", "new-out", "--warmup", "1", "--no-eval"],
        "warmup",
    ),
    ("train-out-is-a-file", ["train-embedder", "--pairs", "pairs.tsv", "-o", "a-file", "--no-eval"], "a-file"),
    (
        "train-model-missing",
        ["train-embedder", "--pairs", "pairs.tsv", "-o", "new-out", "--model", "nowhere", "--no-eval"],
        "nowhere",
    ),
    (
        "train-data-missing",
        ["train-embedder", "--pairs", "pairs.tsv", "-o", "new-out", "--data", "nowhere"],
        "--data nowhere",
    ),
    # kexue repetition
    ("repetition-analyze-missing", ["repetition", "analyze", "nowhere.txt"], "nowhere.txt"),
    ("repetition-analyze-empty", ["repetition", "analyze", "empty.txt"], "empty.txt"),
    ("repetition-analyze-binary", ["repetition", "analyze", "binary.bin"], "binary.bin"),
    ("repetition-analyze-decoding", ["repetition", "analyze", "sentences.txt", "--decoding", "topk=abc"], "topk=abc"),
    ("repetition-analyze-max-vocab", ["repetition", "analyze", "sentences.txt", "--max-vocab", "1"], "--max-vocab"),
    ("repetition-analyze-alpha", ["repetition", "analyze", "sentences.txt", "--alpha", "-1"], "alpha"),
    ("repetition-metrics-empty", ["repetition", "metrics", "blank.txt"], "blank.txt"),
    ("repetition-metrics-binary", ["repetition", "metrics", "binary.bin"], "binary.bin"),
    ("repetition-metrics-period", ["repetition", "metrics", "sentences.txt", "--max-period", "0"], "--max-period"),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("argv", "fragment"), [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(
    inputs: Path, argv: list[str], fragment: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(inputs)
    monkeypatch.setenv("KEXUE_DATA", str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    before = _tree(inputs)
    code = main(argv)
    lines = capsys.readouterr().err.rstrip("\n").splitlines()
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kexue {argv[0]}: error: ") and fragment in lines[0], lines[0]
    assert _tree(inputs) == before, "the failed command left something behind"
