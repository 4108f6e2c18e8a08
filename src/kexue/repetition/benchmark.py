"""``kexue bench repetition``: exact and estimated R at scale; metrics against plain Python.

* A: exact R for a dense ``n = 5,000`` top-40 transition matrix (``--quick``: 1,500): one LU.
* B: the stochastic estimate (:func:`~kexue.repetition.measure.estimate_r`) at ``n = 5,000``
  against the exact value (relative error), and at ``n = 50,000`` with top-40 decoding (sparse,
  2M non-zeros; ``--quick``: 10,000) timed.
* C: the metrics of :func:`~kexue.repetition.metrics.summary`'s core (rep-2/3/4, distinct-2,
  rep/16, loops) over 10,000 generated sequences of 256 tokens (``--quick``: 1,000) against
  the plain-Python twins, same numbers.

* D: :func:`~kexue.repetition.measure.estimate_r` at its default 0.5 % target on the matrix
  families of :func:`matrix_families` (and a model-derived ``P``) at ``n = 5,000`` (``--quick``:
  600) against exact R, every multi-token block estimated stochastically: the worst error.
* E: the estimate to 0.5 % at ``n = 50,000`` (``--quick``: 10,000) on three synthetic families.
* F: ``generate`` on the char model's architecture with and without :class:`~kexue.repetition.dry.DRYLogitsProcessor`.

Test matrices (A, B): rows with a Zipf-like spread (row ``i`` puts mass ``∝ u^6`` on random targets),
truncated to the top 40 and renormalised, i.e. the top-k decoding of a peaked bigram model.

Ratios: ``repetition.estimate_seconds`` (seconds at n = 50,000, target <= 60),
``repetition.estimate_rel_error`` (at n = 5,000, target <= 0.02),
``repetition.metrics_vs_python`` (plain-Python time / kexue time, target >= 5),
``repetition.estimate_worst_rel_error`` (D, target <= 0.01), ``repetition.estimate_seconds_50k``
(E, target <= 60), ``repetition.dry_overhead`` (F: generate time with DRY / without, target <= 1.15).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from kexue.report.bench import Bench, BenchSuite, CaseResult

BENCH = BenchSuite("repetition")


def topk_matrix(n: int, k: int = 40, seed: int = 0) -> sp.csr_array:
    """A random top-``k`` row-stochastic matrix (peaked rows), built sparse."""
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n, size=(n, k))
    vals = rng.random((n, k)) ** 6 + 1e-9
    P = sp.csr_array((vals.ravel(), (np.repeat(np.arange(n), k), cols.ravel())), shape=(n, n))
    P.sum_duplicates()
    totals = np.asarray(P.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags_array(1 / totals) @ P)


def random_sparse(n: int, k: int = 8, seed: int = 0) -> sp.csr_array:
    """``k`` uniform random entries a row on random targets, renormalised."""
    rng = np.random.default_rng(seed)
    return _normalised(np.repeat(np.arange(n), k), rng.integers(0, n, size=n * k), rng.random(n * k), n)


def power_law(n: int, seed: int = 0, exponent: float = 1.2) -> sp.csr_array:
    """Rows with a heavy-tailed number of entries (2 … 400, Pareto), Zipf values ``∝ rank^−exponent``
    and targets drawn with Zipf popularity (a few tokens follow almost everything)."""
    rng = np.random.default_rng(seed)
    sizes = np.clip((rng.pareto(1.2, n) + 1) * 2, 2, 400).astype(np.int64)
    rows = np.repeat(np.arange(n), sizes)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    popular = 1.0 / np.arange(1, n + 1)
    cols = rng.choice(n, size=len(rows), p=popular / popular.sum())
    return _normalised(rows, cols, rank**-exponent, n)


def _normalised(rows, cols, vals, n: int) -> sp.csr_array:
    P = sp.csr_array((vals, (rows, cols)), shape=(n, n))
    P.sum_duplicates()
    totals = np.asarray(P.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags_array(1 / totals) @ P)


def corpus_matrix(tokens: list[str], n: int) -> tuple[sp.csr_array, int]:
    """Sparse bigram ``P`` of ``tokens`` over its ``n`` most frequent types (the rest one ``<unk>``);
    the sequence is read as a cycle (last token followed by the first), so every row has mass."""
    from kexue.repetition.transition import Vocabulary, estimate

    vocab = Vocabulary.build(tokens, max_size=n)
    ids = vocab.encode(tokens)
    return estimate(np.concatenate([ids, ids[:1]]), len(vocab), sparse=True), len(vocab)


def matrix_families(n: int, *, corpora: bool = True, data_root=None) -> dict[str, sp.csr_array]:
    """The estimator's test matrices at size ``n`` (corpus ones at their vocabulary when smaller):
    random sparse, power-law rows, peaked top-40 and (``corpora``) tinyshakespeare words and
    characters, STS-B sentences' words and characters (word matrices under sampling and top-p 0.9)."""
    from kexue.data import load_stsb, load_tinyshakespeare
    from kexue.repetition.transition import apply_decoding, tokenize

    out = {"random sparse, 8 a row": random_sparse(n), "power-law rows": power_law(n), "peaked top-40": topk_matrix(n)}
    if not corpora:
        return out
    shakespeare = load_tinyshakespeare(data_root)
    sts = load_stsb("train", data_root)
    sentences = "\n".join(sts.sentences1 + sts.sentences2)
    for name, text in (("tinyshakespeare", shakespeare), ("STS-B", sentences)):
        words, _ = corpus_matrix(tokenize(text, "word"), n)
        out[f"{name} words, sampling"] = words
        out[f"{name} words, top-p 0.9"] = apply_decoding(words, "topp=0.9")
        out[f"{name} characters, sampling"] = corpus_matrix(tokenize(text, "char"), n)[0]
    return out


def model_matrix(n: int, *, data_root=None, seed: int = 0) -> sp.csr_array:
    """A model-derived ``P``: :func:`~kexue.repetition.transition.from_model` of a small LLaMA
    (vocabulary ``n``, tinyshakespeare's most frequent words; random weights: no training at this size
    on a CPU) over the first 4,096 word ids, sharpened to temperature 0.05 and then top-40-truncated, so rows are peaked and sparse."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kexue.data import load_tinyshakespeare
    from kexue.repetition.transition import Vocabulary, apply_decoding, from_model, tokenize

    tokens = tokenize(load_tinyshakespeare(data_root), "word")
    vocab = Vocabulary.build(tokens, max_size=n)
    ids = torch.as_tensor(
        vocab.encode(tokens[: 64 * 64])
    )  # rows of tokens not in these windows: the model after that token alone
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    )
    P = from_model(model, ids[: 64 * 64].reshape(64, 64), batch_size=8)
    return sp.csr_array(apply_decoding(apply_decoding(P, "temperature=0.05"), "topk=40", sparse=True))


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@BENCH.case
def exact_and_estimate(bench: Bench) -> None:
    from kexue.repetition.measure import estimate_r, exact_r

    n_exact = 1500 if bench.quick else 5000
    n_big = 10_000 if bench.quick else 50_000
    P = topk_matrix(n_exact)
    dense = P.toarray()
    t_exact, r = _seconds(lambda: exact_r(dense))
    t_est, est = _seconds(lambda: estimate_r(P, probes=64))
    case = "A/B: R of a top-40 bigram decoder"
    bench.cases.append(
        CaseResult(
            bench.technique, case, f"exact (dense LU), n = {n_exact:,}", t_exact, [t_exact], None, {"n": n_exact}
        )
    )
    bench.cases.append(
        CaseResult(
            bench.technique,
            case,
            f"estimate (64 probes to start), n = {n_exact:,}",
            t_est,
            [t_est],
            None,
            {"n": n_exact, "stderr": est.stderr},
        )
    )
    big = topk_matrix(n_big, seed=1)
    t_big, est_big = _seconds(lambda: estimate_r(big, probes=64, rel_error=None))
    bench.cases.append(
        CaseResult(
            bench.technique,
            case,
            f"estimate (64 probes), n = {n_big:,}, {big.nnz:,} non-zeros",
            t_big,
            [t_big],
            None,
            {"n": n_big, "R": est_big.value, "stderr": est_big.stderr, "terms": est_big.terms},
        )
    )
    bench.ratio(
        "repetition.estimate_seconds",
        t_big,
        target=60.0,
        higher_is_better=False,
        description=f"seconds for the estimate at n = {n_big:,} (top-40, 64 probes, R = {est_big.value:.4g} ± {est_big.stderr:.2g})",
    )
    bench.ratio(
        "repetition.estimate_rel_error",
        abs(est.value - r) / r,
        target=0.02,
        higher_is_better=False,
        description=f"|estimate − exact| / exact at n = {n_exact:,} (exact R = {r:.6g}, exact in {t_exact:.1f} s)",
    )


@BENCH.case
def estimate_families(bench: Bench) -> None:
    from kexue.repetition.claims import estimator_errors

    n = 600 if bench.quick else 5000
    families = matrix_families(n, corpora=not bench.quick)  # --quick: the synthetic families
    if not bench.quick:
        families["model-derived (LLaMA, T 0.05, top-40)"] = model_matrix(n)
    rows = estimator_errors(families)  # every multi-token block down the stochastic path
    case = f"D: estimate_r (0.5 % target) against exact R, n = {n:,}"
    for name, v in rows.items():
        bench.cases.append(
            CaseResult(
                bench.technique,
                case,
                name,
                v["seconds"],
                [v["seconds"]],
                None,
                {k: v[k] for k in ("n", "exact R", "estimate", "stderr", "actual relative error", "probes")},
            )
        )
    worst = max(rows, key=lambda k: rows[k]["actual relative error"])
    bench.ratio(
        "repetition.estimate_worst_rel_error",
        rows[worst]["actual relative error"],
        target=0.01,
        higher_is_better=False,
        description=f"worst |estimate − exact| / exact over {len(rows)} matrix families at n = {n:,} ({worst})",
    )


@BENCH.case
def estimate_50k(bench: Bench) -> None:
    from kexue.repetition.measure import estimate_r

    n = 10_000 if bench.quick else 50_000
    case = f"E: estimate_r to 0.5 % standard error, n = {n:,}"
    times = {}
    for name, P in (
        ("random sparse, 8 a row", random_sparse(n)),
        ("power-law rows", power_law(n)),
        ("peaked top-40", topk_matrix(n, seed=1)),
    ):
        t, est = _seconds(lambda: estimate_r(P))
        times[name] = t
        bench.cases.append(
            CaseResult(
                bench.technique,
                case,
                name,
                t,
                [t],
                None,
                {
                    "n": n,
                    "nnz": P.nnz,
                    "R": est.value,
                    "stderr": est.stderr,
                    "probes": est.probes,
                    "converged": est.converged,
                },
            )
        )
    slowest = max(times, key=times.get)
    bench.ratio(
        "repetition.estimate_seconds_50k",
        times[slowest],
        target=60.0,
        higher_is_better=False,
        description=f"seconds to a 0.5 % standard error at n = {n:,}, slowest of three families ({slowest})",
    )


@BENCH.case
def dry_overhead(bench: Bench) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

    from kexue._shared import quieter
    from kexue.repetition.dry import DRYLogitsProcessor

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=65,
            hidden_size=64,
            intermediate_size=168,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    ).eval()
    batch, new = (4, 32) if bench.quick else (32, 256)
    prompt = torch.randint(0, 65, (batch, 16), generator=torch.Generator().manual_seed(0))

    def generate(dry: bool) -> None:
        kw = (
            {"logits_processor": LogitsProcessorList([DRYLogitsProcessor(0.8, breaker_ids=[[0], [10]])])} if dry else {}
        )
        torch.manual_seed(0)
        with torch.no_grad(), quieter("transformers.generation.utils"):
            model.generate(prompt, max_new_tokens=new, do_sample=True, top_k=0, pad_token_id=0, **kw)

    case = f"F: generate on the char model (LLaMA d 64, 2 layers, vocabulary 65), {batch} x {new} tokens, sampling, one thread"
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # a model this small gains nothing from intra-op threads; one thread keeps both sides steady
    try:
        generate(False), generate(True)  # warm-up
        plain, dry = [], []
        for _ in range(max(3, bench.repeats)):  # interleaved, so drift in the machine's load hits both
            plain.append(_seconds(lambda: generate(False))[0])
            dry.append(_seconds(lambda: generate(True))[0])
    finally:
        torch.set_num_threads(threads)
    for name, times in (("without DRY", plain), ("with DRY (kexue)", dry)):
        bench.cases.append(
            CaseResult(
                bench.technique, case, name, float(np.median(times)), times, None, {"batch": batch, "tokens": new}
            )
        )
    bench.ratio(
        "repetition.dry_overhead",
        float(np.median(dry) / np.median(plain)),
        target=1.15,
        higher_is_better=False,
        description=f"generate time with DRY / without, median of {len(plain)} interleaved runs ({batch} x {new} tokens)",
    )


@BENCH.case
def metrics(bench: Bench) -> None:
    from kexue.repetition import metrics as fast
    from kexue.repetition import metrics_reference as slow

    count = 1000 if bench.quick else 10_000
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 50, size=(count, 256))
    loopers = rng.random(count) < 0.3  # plant loops in 30 % of them
    for i in np.flatnonzero(loopers):
        k = int(rng.integers(1, 8))
        start = int(rng.integers(50, 200))
        cycle = seqs[i, start : start + k].copy()
        seqs[i, start:] = np.resize(cycle, 256 - start)
    seqs = [list(s) for s in seqs.tolist()]

    def ours():
        padded = fast._padded(seqs)  # lists converted once, then shared by every metric
        return (
            [float(np.nanmean(fast.rep_n(padded, n))) for n in (2, 3, 4)],
            fast.distinct_n(padded, 2),
            fast.rep_l(padded, 16),
            fast.find_loops(padded, 32, 2).looped.tolist(),
        )

    def theirs():
        return (
            [slow.seq_rep_n(seqs, n) for n in (2, 3, 4)],
            slow.distinct_n(seqs, 2),
            slow.rep_l(seqs, 16),
            [x[0] for x in slow.find_loops(seqs, 32, 2)],
        )

    case = f"C: metrics over {count:,} sequences of 256 tokens"
    t_ours, a = _seconds(ours)
    t_theirs, b = _seconds(theirs)
    if not (np.allclose(a[0], b[0]) and np.isclose(a[1], b[1]) and np.isclose(a[2], b[2]) and a[3] == b[3]):
        raise AssertionError("vectorised metrics disagree with the plain-Python definitions")
    bench.cases.append(CaseResult(bench.technique, case, "kexue (NumPy)", t_ours, [t_ours], None, {"sequences": count}))
    bench.cases.append(
        CaseResult(
            bench.technique, case, "plain Python (same definitions)", t_theirs, [t_theirs], None, {"sequences": count}
        )
    )
    bench.ratio(
        "repetition.metrics_vs_python",
        t_theirs / t_ours,
        target=5.0,
        description="plain-Python time / kexue time, rep-2/3/4, distinct-2, rep/16 and loops (same numbers)",
    )
