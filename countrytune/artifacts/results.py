"""Base against adapter on held-out sets: the numbers, their standard errors, the table.

One schema (`HeldoutResults`) for `countrytune eval`'s results.json, the training run's
run.json, the export manifest and the model card (the numbers are computed by
pipeline/scoring/compare.py):

    {task: {lang: {metric, base, adapter, diff, stderr, ...}}}

`stderr` is the standard error of the difference, paired over the same documents (a
bootstrap over documents for bits-per-byte, whose value is a ratio of sums; the closed form
for accuracy). A difference is worth reading when it is several times its stderr.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import RootModel

from countrytune.atomic import atomic_write
from countrytune.schema import Schema, read_json

RESULTS_NAME = "results.json"
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
    copy_source: float | None = None
    """Translation (chrf++): the corpus chrF++ of each source sentence itself as its answer, on
    the same documents: what copying the input scores. Related languages share many words, so
    this is far from 0; a model at or below it has learnt little translation."""


class HeldoutResults(RootModel[dict[str, dict[str, Comparison]]]):
    """{task: {lang: Comparison}}."""

    def rows(self):
        for task, langs in self.root.items():
            for lang, c in langs.items():
                yield task, lang, c


def write_results(out_dir: Path, results: HeldoutResults) -> Path:
    return atomic_write(Path(out_dir) / RESULTS_NAME, results.model_dump_json(indent=2) + "\n")


def read_results(path: Path) -> HeldoutResults:
    """A results.json; one that breaks the schema is refused naming the field."""
    return read_json(path, HeldoutResults)


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
    and macro-F1; translation directions two, chrF++ and what copying the source scores."""
    for task, lang, c in results.rows():
        yield task, lang, c
        if c.macro_f1:
            yield task, lang, _f1_row(c)
        if c.copy_source is not None:
            yield task, lang, Comparison(metric="chrf++ of the source copied", docs=c.docs, base=c.copy_source,
                                         base_stderr=0.0)


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
