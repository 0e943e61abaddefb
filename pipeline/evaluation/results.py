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
HIGHER_IS_BETTER = {"bits_per_byte": False, "acc": True}


class Comparison(Schema):
    """One task on one language's held-out set."""

    metric: str
    """bits_per_byte (lower is better) or acc (higher is better)."""
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
    """Classification tasks: macro-F1 over the labels, {base, adapter}."""


class HeldoutResults(RootModel[dict[str, dict[str, Comparison]]]):
    """{task: {lang: Comparison}}."""

    def rows(self):
        for task, langs in self.root.items():
            for lang, c in langs.items():
                yield task, lang, c


def _bpb(ll: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    return -ll.sum(axis=-1) / nbytes.sum(axis=-1) / math.log(2)


def _macro_f1(pred: list[int], gold: list[int], classes: int) -> float:
    scores = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / classes


def compare(base: DocScores, adapter: DocScores | None) -> Comparison:
    """Values, stderrs and the paired difference of one task set."""
    n = len(base.values)
    if adapter is not None and adapter.ids != base.ids:
        raise ValueError(f"base and adapter were scored on different documents ({n} and "
                         f"{len(adapter.ids)}); the pairing of the difference would be wrong")
    if base.metric == "bits_per_byte":
        idx = np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
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
        classes = 1 + max(base.gold)
        f1 = {"base": _macro_f1(base.predictions, base.gold, classes)}
        if adapter is not None:
            f1["adapter"] = _macro_f1(adapter.predictions, adapter.gold, classes)
        out["macro_f1"] = f1
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


def markdown_table(results: HeldoutResults) -> str:
    """The table for model cards and RESULTS.md."""
    lines = ["| task | language | metric | docs | base | adapter | difference | stderr of diff |",
             "|---|---|---|---|---|---|---|---|"]
    for task, lang, c in results.rows():
        base, adapter, diff, err = _fmt(c)
        lines.append(f"| {task} | {lang} | {c.metric} | {c.docs} | {base} | {adapter} | {diff} | {err} |")
    return "\n".join(lines)


def print_table(results: HeldoutResults, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "language", "metric", "docs", "base", "adapter", "difference", "stderr"):
        table.add_column(col, justify="left" if col in ("task", "language", "metric") else "right")
    for task, lang, c in results.rows():
        table.add_row(task, lang, c.metric, str(c.docs), *_fmt(c))
    console = Console()
    console.width = max(console.width, 120)  # a log file is no terminal: do not cut names short
    console.print(table)
