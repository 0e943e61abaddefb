"""Base against adapter on held-out sets: the numbers, their standard errors, the table.

One schema (`HeldoutResults`) for `countrytune eval`'s results.json, the training run's
run.json, the export manifest and the model card:

    {task: {lang: {metric, base, adapter, diff, stderr, ...}}}

`stderr` is the standard error of the difference, paired over the same documents (a
bootstrap over documents for bits-per-byte, whose value is a ratio of sums; the closed form
for accuracy). A difference is worth reading when it is several times its stderr.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import RootModel

from countrytune.schema import Schema
from pipeline.evaluation.harness import DocScores

BOOTSTRAP_RESAMPLES = 1000  # stderr of a bpb difference moves < 5% between 1,000 and 10,000
HIGHER_IS_BETTER = {"bits_per_byte": False, "acc": True, "exact_match": True, "macro_f1": True}


class Comparison(Schema):
    """One task on one language's held-out set."""

    metric: str
    """bits_per_byte (lower is better), acc or exact_match (higher is better)."""
    docs: int
    base: float
    base_stderr: float
    adapter: float | None = None
    adapter_stderr: float | None = None
    diff: float | None = None
    """adapter - base."""
    relative_diff: float | None = None
    """diff / base."""
    stderr: float | None = None
    """Standard error of `diff`, paired over the documents."""
    macro_f1: dict[str, float] | None = None
    """Classification tasks: macro-F1 over the labels, {base, base_stderr, adapter,
    adapter_stderr, diff, stderr} (bootstrap over documents; `stderr` of the difference,
    paired). An answer that is none of the labels counts against its gold label."""


class HeldoutResults(RootModel[dict[str, dict[str, Comparison]]]):
    """{task: {lang: Comparison}}."""

    def rows(self):
        for task, langs in self.root.items():
            for lang, c in langs.items():
                yield task, lang, c


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


def compare(base: DocScores, adapter: DocScores | None) -> Comparison:
    """Values, stderrs and the paired difference of one task set."""
    n = len(base.values)
    if adapter is not None and adapter.ids != base.ids:
        raise ValueError(f"base and adapter were scored on different documents ({n} and "
                         f"{len(adapter.ids)}); the pairing of the difference would be wrong")
    if base.metric == "bits_per_byte":
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
        out["macro_f1"] = _f1_comparison(base, adapter)
    if adapter is not None:
        out["diff"] = out["adapter"] - out["base"]
        out["relative_diff"] = out["diff"] / out["base"] if out["base"] else None
    return Comparison(metric=base.metric, docs=n, **out)


def _fmt(c: Comparison) -> tuple[str, str, str, str]:
    base = f"{c.base:.4f}"
    if c.adapter is None:
        return base, "-", "-", f"±{c.base_stderr:.4f}"
    rel = f" ({c.relative_diff:+.1%})" if c.relative_diff is not None else ""
    better = (c.diff < 0) != HIGHER_IS_BETTER.get(c.metric, True) if c.diff else False
    mark = " better" if better and abs(c.diff) > 2 * (c.stderr or 0) else ""
    return base, f"{c.adapter:.4f}", f"{c.diff:+.4f}{rel}{mark}", f"±{c.stderr:.4f}"


def _f1_row(c: Comparison) -> Comparison:
    """A classification set's macro-F1 as a row of its own."""
    f1 = c.macro_f1
    rel = f1["diff"] / f1["base"] if "diff" in f1 and f1["base"] else None
    return Comparison(metric="macro_f1", docs=c.docs, base=f1["base"], base_stderr=f1["base_stderr"],
                      adapter=f1.get("adapter"), adapter_stderr=f1.get("adapter_stderr"),
                      diff=f1.get("diff"), relative_diff=rel, stderr=f1.get("stderr"))


def table_rows(results: HeldoutResults):
    """(task, language, comparison) per table row: classification sets give two, the metric
    and macro-F1."""
    for task, lang, c in results.rows():
        yield task, lang, c
        if c.macro_f1:
            yield task, lang, _f1_row(c)


def markdown_table(results: HeldoutResults) -> str:
    """The table for model cards and RESULTS.md."""
    lines = ["| task | language | metric | docs | base | adapter | difference | stderr of diff |",
             "|---|---|---|---|---|---|---|---|"]
    for task, lang, c in table_rows(results):
        base, adapter, diff, err = _fmt(c)
        lines.append(f"| {task} | {lang} | {c.metric} | {c.docs} | {base} | {adapter} | {diff} | {err} |")
    return "\n".join(lines)


def print_table(results: HeldoutResults, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "language", "metric", "docs", "base", "adapter", "difference", "stderr"):
        table.add_column(col, justify="left" if col in ("task", "language", "metric") else "right")
    for task, lang, c in table_rows(results):
        table.add_row(task, lang, c.metric, str(c.docs), *_fmt(c))
    console = Console()
    console.width = max(console.width, 120)  # a log file is no terminal: do not cut names short
    console.print(table)
