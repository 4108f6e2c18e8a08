"""``kexue whiten fit`` then ``eval`` from the command line."""

from __future__ import annotations

import json

from kexue.cli import main
from kexue.whitening import Whitening


def test_fit_then_eval(tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"sentence {i} about topic {i % 7}" for i in range(60)))
    out = tmp_path / "w.safetensors"
    assert main(["whiten", "fit", "--corpus", str(corpus), "-k", "16", "-o", str(out)]) == 0
    w = Whitening.load(out)
    assert w.n_components_ == 16 and w.n_samples_seen_ == 60 and w.info_["pooling"] == "model"
    capsys.readouterr()
    assert main(["whiten", "eval", "--whitening", str(out), "--tasks", "STS-B", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"STS-B"} and scores["STS-B"]["pairs"] == 1379 and -100 < scores["STS-B"]["all"] < 100


def test_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["whiten", "eval", "--tasks", "STS99"]) == 2
    assert "STS99" in capsys.readouterr().err
    assert main(["whiten", "fit", "--corpus", str(tmp_path / "none.txt"), "-o", str(tmp_path / "w")]) == 2
    assert main(["whiten", "fit", "--corpus", "x", "-o", "y", "--pooling", "max"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("kexue whiten: error:") for line in err)
