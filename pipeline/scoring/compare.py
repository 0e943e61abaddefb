"""Base against adapter, paired over the same documents: values, standard errors and the
difference of one task set (a bootstrap over documents for bits-per-byte and corpus chrF++,
whose values are functions of sums; the closed form for accuracy and language consistency),
as the `Comparison` results.json holds."""

from __future__ import annotations

import math

import numpy as np

from countrytune.artifacts.results import Comparison
from pipeline.scoring.generative import consistent, corpus_chrf
from pipeline.scoring.harness import DocScores

LANGUAGE_CONSISTENCY = "language_consistency"

BOOTSTRAP_RESAMPLES = 1000  # stderr of a bpb difference moves < 5% between 1,000 and 10,000


def _bpb(ll: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    return -ll.sum(axis=-1) / nbytes.sum(axis=-1) / math.log(2)


def macro_f1(pred: np.ndarray, gold: np.ndarray, classes: int) -> np.ndarray:
    """Macro-F1 over the last axis (one value per row of resampled documents); a prediction of
    -1 (no label) is a miss for its gold label and a false positive for none."""
    scores = []
    for c in range(classes):
        tp = ((pred == c) & (gold == c)).sum(axis=-1)
        fp = ((pred == c) & (gold != c)).sum(axis=-1)
        fn = ((pred != c) & (gold == c)).sum(axis=-1)
        scores.append(np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0))
    return np.mean(scores, axis=0)


def _resamples(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))


def _f1_comparison(base: DocScores, adapter: DocScores | None) -> dict[str, float]:
    classes = base.classes or 1 + max(base.gold)
    gold, pb, idx = np.asarray(base.gold), np.asarray(base.predictions), _resamples(len(base.gold))
    boot_b = macro_f1(pb[idx], gold[idx], classes)
    out = {"base": float(macro_f1(pb, gold, classes)), "base_stderr": float(boot_b.std(ddof=1))}
    if adapter is not None:
        pa = np.asarray(adapter.predictions)
        boot_a = macro_f1(pa[idx], gold[idx], classes)
        out.update(adapter=float(macro_f1(pa, gold, classes)), adapter_stderr=float(boot_a.std(ddof=1)))
        out["diff"] = out["adapter"] - out["base"]
        out["stderr"] = float((boot_a - boot_b).std(ddof=1))
    return out


def _chrf_comparison(base: DocScores, adapter: DocScores | None) -> dict[str, float]:
    """Corpus chrF++ and its bootstrap: each resample's corpus score from its documents'
    summed statistics (sacrebleu's paired bootstrap), the same resamples for both models."""
    idx = _resamples(len(base.ids))
    sb = np.asarray(base.stats, dtype=np.float64)
    boot_b = corpus_chrf(sb[idx])
    out = {"base": float(corpus_chrf(sb)), "base_stderr": float(boot_b.std(ddof=1))}
    if adapter is not None:
        sa = np.asarray(adapter.stats, dtype=np.float64)
        boot_a = corpus_chrf(sa[idx])
        out.update(adapter=float(corpus_chrf(sa)), adapter_stderr=float(boot_a.std(ddof=1)),
                   stderr=float((boot_a - boot_b).std(ddof=1)))
    return out


def copy_source_chrf(records_file, ids: list[str]) -> float:
    """Corpus chrF++ of the source sentences as the answers, for the documents `ids` of a
    translation set's records (JSONL with id, source, reference)."""
    import json
    from pathlib import Path

    from pipeline.scoring.generative import chrf_documents

    records = {r["id"]: r for r in map(json.loads, Path(records_file).read_text(encoding="utf-8").splitlines())}
    _, stats = chrf_documents([records[i]["source"] for i in ids], [records[i]["reference"] for i in ids])
    return float(corpus_chrf(np.asarray(stats, dtype=np.float64)))


def language_consistency(sets: list[tuple[DocScores, DocScores | None]]) -> Comparison:
    """The share of answers in the language asked for, over the given sets (all asking for
    one language), base against adapter, paired over the documents (closed form)."""
    def joined(scores: list[DocScores]) -> DocScores:
        return DocScores(LANGUAGE_CONSISTENCY, [f"{s.target}:{i}" for s in scores for i in s.ids],
                         [v for s in scores for v in consistent(s.languages, s.target)])

    base = joined([b for b, _ in sets])
    adapter = joined([a for _, a in sets]) if all(a is not None for _, a in sets) else None
    return compare(base, adapter)


def compare(base: DocScores, adapter: DocScores | None) -> Comparison:
    """Values, stderrs and the paired difference of one task set."""
    n = len(base.values)
    if adapter is not None and adapter.ids != base.ids:
        raise ValueError(f"base and adapter were scored on different documents ({n} and "
                         f"{len(adapter.ids)}); the pairing of the difference would be wrong")
    if base.metric == "chrf++":
        out = _chrf_comparison(base, adapter)
    elif base.metric == "bits_per_byte":
        idx = _resamples(n)
        nbytes = np.asarray(base.weights, dtype=np.float64)
        lb = np.asarray(base.values, dtype=np.float64)
        boot_b = _bpb(lb[idx], nbytes[idx])
        out = {"base": float(_bpb(lb, nbytes)), "base_stderr": float(boot_b.std(ddof=1))}
        if adapter is not None:
            la = np.asarray(adapter.values, dtype=np.float64)
            boot_a = _bpb(la[idx], nbytes[idx])
            out.update(adapter=float(_bpb(la, nbytes)), adapter_stderr=float(boot_a.std(ddof=1)),
                       stderr=float((boot_a - boot_b).std(ddof=1)))
    else:
        b = np.asarray(base.values, dtype=np.float64)
        sem = (lambda x: float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0)
        out = {"base": float(b.mean()), "base_stderr": sem(b)}
        if adapter is not None:
            a = np.asarray(adapter.values, dtype=np.float64)
            out.update(adapter=float(a.mean()), adapter_stderr=sem(a), stderr=sem(a - b))
        if base.predictions is not None:  # classification; not language consistency
            out["macro_f1"] = _f1_comparison(base, adapter)
    if adapter is not None:
        out["diff"] = out["adapter"] - out["base"]
        out["relative_diff"] = out["diff"] / out["base"] if out["base"] else None
    return Comparison(metric=base.metric, docs=n, **out)
