"""Shared test configuration: ``gpu`` tests are skipped where CUDA is unavailable."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# the tests build kernels and record timings in a cache of their own, never the user's
os.environ.setdefault("KEXUE_CACHE_DIR", tempfile.mkdtemp(prefix="kexue-test-cache-"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker 'gpu')")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_claims():
    """``run_claims(suite, *checks)``: a quick-scale ClaimContext after running ``checks``
    (all of the suite's when none are named), crashes raised rather than recorded."""
    from kexue.report.claims import ClaimContext

    def run(suite, *checks):
        ctx = ClaimContext(suite.technique, suite.article, mode="quick")
        for check in checks or suite.checks:
            suite.run_check(check, ctx, debug=True)
        return ctx

    return run


@pytest.fixture(scope="session")
def tiny_sentence_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 2-layer BERT (hidden 32, max_seq_length 16) with the embedded model's tokenizer, saved
    as a sentence-transformers folder: fast to train, for the training and interruption tests."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kexue.data import embedded_model_path

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    st = SentenceTransformer(
        modules=[Transformer(str(root / "bert"), max_seq_length=16), Pooling(32, "mean")], device="cpu"
    )
    st.save(str(root / "st"))
    return str(root / "st")
