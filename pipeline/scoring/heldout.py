"""Held-out evaluation as one job: write the tasks, score the model(s), compare, save.

Shared by `countrytune eval` (models loaded from disk) and the trainer (the model it holds,
scored before step 1 and after the last one). Output folder:

    tasks/            lm-eval task YAMLs (rerun with stock `lm_eval --include_path tasks`)
    heldout/          the records scored, as JSONL, and rejects.jsonl
    scores/base.json  per-document scores; scores/adapter.json
    results.json      {task: {lang: {base, adapter, diff, stderr, ...}}}; a translation task
                      has rows per direction (chrF++) and `<task>_language` per target language
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from countrytune.atomic import atomic_write
from countrytune.errors import UserError
from pipeline.scoring.harness import DocScores, score_model
from countrytune.artifacts.results import HeldoutResults
from pipeline.scoring.compare import compare, language_consistency
from pipeline.scoring.suite import EvalSuite, TaskSet, materialise

def prepare(suite: EvalSuite | None, out_dir: Path, *, tasks: list[str] | None = None,
            languages: list[str] | None = None, extra_text: dict[str, list[str]] | None = None,
            max_docs: int | None = None, log: Callable[[str], None] = print) -> list[TaskSet]:
    sets = materialise(suite, out_dir, tasks=tasks, languages=languages, extra_text=extra_text,
                       max_docs=max_docs)
    rejected = sum(sum(ts.rejected.values()) for ts in sets)
    log(f"held-out sets: {len(sets)} ({sum(ts.docs for ts in sets):,} records"
        + (f"; {rejected} unusable, listed in {out_dir / 'heldout' / 'rejects.jsonl'}" if rejected else "")
        + ")")
    return sets


def score(model, tokenizer, sets: list[TaskSet], out_dir: Path, label: str, *, batch_size: int = 8,
          log: Callable[[str], None] = print) -> dict[str, DocScores]:
    """Score and write `scores/<label>.json` (atomically)."""
    scores = score_model(model, tokenizer, sets, out_dir / "tasks", batch_size=batch_size, label=label, log=log)
    path = out_dir / "scores" / f"{label}.json"
    atomic_write(path, json.dumps({k: v.to_json() for k, v in scores.items()}))
    return scores


def load_scores(out_dir: Path, label: str) -> dict[str, DocScores] | None:
    path = out_dir / "scores" / f"{label}.json"
    if not path.is_file():
        return None
    return {k: DocScores(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def results(sets: list[TaskSet], base: dict[str, DocScores],
            adapter: dict[str, DocScores] | None) -> HeldoutResults:
    table: dict[str, dict] = {}
    asked: dict[tuple[str, str], list] = {}  # (translation task, target language) -> its sets
    for ts in sets:
        if ts.lm_eval_name not in base:
            raise UserError(f"no base scores for {ts.lm_eval_name}: the held-out sets changed since "
                            f"the base was scored; score the base again")
        table.setdefault(ts.task, {})[ts.lang] = compare(
            base[ts.lm_eval_name], adapter[ts.lm_eval_name] if adapter else None)
        if ts.metric == "chrf++":
            asked.setdefault((ts.task, ts.target), []).append(
                (base[ts.lm_eval_name], adapter[ts.lm_eval_name] if adapter else None))
    for (task, target), pairs in asked.items():  # every direction into a language counts for it
        table.setdefault(f"{task}_language", {})[target] = language_consistency(pairs)
    return HeldoutResults(table)
