"""``kexue train-embedder`` on a tiny random BERT: resumable, deterministic, clear errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kexue.cli import main
from kexue.contrastive.train import TrainConfig, TrainProgress, load_trainer_state, read_pairs, train_embedder

SENTENCES = [
    f"sentence number {i} about {w}"
    for i, w in enumerate(["cats", "dogs", "the sea", "music", "rain", "trains", "bread", "chess"] * 3)
]


@pytest.fixture
def pairs_file(tmp_path: Path) -> str:
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(f"{s}\t{s.replace('about', 'on')}" for s in SENTENCES) + "\n")
    return str(path)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def test_resumed_run_equals_uninterrupted_run(tiny_sentence_model: str, pairs_file: str, tmp_path: Path) -> None:
    common = dict(
        model=tiny_sentence_model,
        pairs=pairs_file,
        batch_size=8,
        micro_batch_size=3,
        epochs=2,
        lr=1e-3,
        evaluate=False,
        checkpoint_every=2,
    )
    whole = train_embedder(TrainConfig(out=str(tmp_path / "whole"), **common))
    assert whole.steps == 6 and all(torch.isfinite(torch.tensor(whole.losses)))

    class Interrupted(Exception):
        pass

    def interrupt_at_step_5(loss: float, seen=[]) -> None:  # noqa: B006 -- the list carries state between calls
        seen.append(loss)
        if len(seen) == 5:  # the checkpoint of step 4 is on disk, step 5's is not
            raise Interrupted

    with pytest.raises(Interrupted):
        train_embedder(
            TrainConfig(out=str(tmp_path / "split"), **common), progress=TrainProgress(advance=interrupt_at_step_5)
        )
    resumed = train_embedder(TrainConfig(out=str(tmp_path / "split"), **common), resume=True)
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert resumed.losses == whole.losses
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(Path(tiny_sentence_model) / "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a)  # training moved the weights
    log = json.loads((tmp_path / "split" / "training.json").read_text())
    assert log["steps"] == 6 and log["resumed_from"] == 4
    rng = load_trainer_state(tmp_path / "split" / "checkpoint")["rng"]  # every device's generator, safely loadable
    assert isinstance(rng["cpu"], torch.Tensor) and len(rng.get("devices", [])) == torch.cuda.device_count()
    assert not list((tmp_path / "split").glob("*.tmp*")) and not list((tmp_path / "split").glob("*.old"))


def test_simcse_from_sentences_with_sts_evaluation(tiny_sentence_model: str, tmp_path: Path) -> None:
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES))
    result = train_embedder(
        TrainConfig(
            model=tiny_sentence_model,
            sentences=str(sentences),
            out=str(tmp_path / "out"),
            batch_size=12,
            micro_batch_size=5,
            max_steps=2,
            eval_split="dev",
        )
    )
    assert result.steps == 2
    # a random 2-layer BERT correlates weakly but measurably with STS-B dev
    assert -100 < result.sts_before < 100 and result.sts_before != result.sts_after
    assert result.losses[0] > 0  # dropout makes the two views differ


def test_bad_inputs(tmp_path: Path, pairs_file: str) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        TrainConfig(out=str(tmp_path)).validate()
    with pytest.raises(ValueError, match="micro_batch_size"):
        TrainConfig(pairs=pairs_file, micro_batch_size=0).validate()
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\n")
    with pytest.raises(ValueError, match="line 2"):
        read_pairs(bad)


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-embedder", "--pairs", str(tmp_path / "missing.tsv"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.tsv" in err[0]
    assert main(["train-embedder", "--pairs", "x.tsv", "-o", str(tmp_path / "o"), "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_saved_model_keeps_its_own_length_and_a_left_out_remainder_is_said(
    tiny_sentence_model: str, pairs_file: str, tmp_path: Path
) -> None:
    """Training at --max-length 8 must not save max_seq_length 8 (the tiny model's own is 16), in the
    model or the checkpoint; 24 pairs at batch 10 leave 4 out per epoch, which is said, not silent."""
    from sentence_transformers import SentenceTransformer

    said: list[str] = []
    out = tmp_path / "out"
    config = TrainConfig(
        model=tiny_sentence_model,
        pairs=pairs_file,
        out=str(out),
        batch_size=10,
        micro_batch_size=4,
        max_length=8,
        epochs=2,
        max_steps=3,
        checkpoint_every=1,
        evaluate=False,
    )
    result = train_embedder(config, progress=TrainProgress(message=said.append))
    assert result.extra["samples_left_out_per_epoch"] == 4 and result.extra["max_seq_length"] == 16
    assert any("24 samples at batch 10" in m and "4 samples" in m for m in said), said
    assert SentenceTransformer(str(out / "model"), device="cpu").max_seq_length == 16
    assert SentenceTransformer(str(out / "checkpoint"), device="cpu").max_seq_length == 16
    resumed = train_embedder(replace(config, max_steps=4), resume=True)
    assert resumed.resumed_from == 3 and resumed.extra["max_seq_length"] == 16  # not the training length


def test_micro_batch_above_batch_is_refused(pairs_file: str) -> None:
    with pytest.raises(ValueError, match="micro_batch_size=16 must not exceed batch_size=8"):
        TrainConfig(pairs=pairs_file, batch_size=8, micro_batch_size=16).validate()


def test_verify_checks_the_first_batch_and_exits_by_the_result(
    tiny_sentence_model: str, pairs_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never-written"
    argv = [
        "train-embedder",
        "--pairs",
        pairs_file,
        "--model",
        tiny_sentence_model,
        "--batch-size",
        "12",
        "--micro-batch-size",
        "5",
        "-o",
        str(out),
        "--verify",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 micro-batches of at most 5" in printed and "0.model.encoder.layer.1" in printed and "passed" in printed
    assert not out.exists()  # --verify trains nothing and writes nothing
    assert main([*argv, "--tolerance", "1e-30"]) == 1  # float32 rounding is above any bound this small
    assert "FAILED" in capsys.readouterr().out


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the kind of object a crafted checkpoint would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _crafted_checkpoint(out: Path) -> Path:
    folder = out / "checkpoint"
    folder.mkdir(parents=True)
    marker = out.parent / "code-ran"
    torch.save(
        {"optimizer": _Payload(marker), "scheduler": {}, "step": 1, "losses": [], "rng": torch.get_rng_state()},
        folder / "trainer_state.pt",
    )
    return marker


def test_a_crafted_pickle_in_a_checkpoint_is_refused(
    pairs_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    marker = _crafted_checkpoint(out)
    config = TrainConfig(pairs=pairs_file, out=str(out), batch_size=8, micro_batch_size=3, evaluate=False)
    with pytest.raises(ValueError, match=r"not a safe training state.*refusing to unpickle it \(.*open"):
        train_embedder(config, resume=True)
    assert not marker.exists()
    assert main(["train-embedder", "--pairs", pairs_file, "-o", str(out), "--resume", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "trainer_state.pt is not a safe training state" in err[0]
        and "weights_only=False" not in err[0]
    )
    assert not marker.exists()
