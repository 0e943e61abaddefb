"""Held-out evaluation as one job: write the tasks, score the model(s), compare, save.

Shared by `countrytune eval` (models loaded from disk) and the trainer (the model it holds,
scored before step 1 and after the last one). Output folder:

    tasks/            lm-eval task YAMLs (rerun with stock `lm_eval --include_path tasks`)
    heldout/          the records scored, as JSONL, and rejects.jsonl
    scores/base.json  per-document scores; scores/adapter.json
    scores/base.fingerprint.json  what the base scores depend on (model, settings, each set's
                      records and task), so a later eval of another adapter may reuse them
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
from pipeline.scoring.compare import compare, copy_source_chrf, language_consistency
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
    _write_scores(out_dir, label, scores)
    return scores


def _write_scores(out_dir: Path, label: str, scores: dict[str, DocScores]) -> None:
    atomic_write(out_dir / "scores" / f"{label}.json", json.dumps({k: v.to_json() for k, v in scores.items()}))


def load_scores(out_dir: Path, label: str) -> dict[str, DocScores] | None:
    path = out_dir / "scores" / f"{label}.json"
    if not path.is_file():
        return None
    return {k: DocScores(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


BASE_FINGERPRINT = "base.fingerprint.json"


def base_fingerprint(sets: list[TaskSet], out_dir: Path, **settings) -> dict:
    """What the base's scores depend on: `settings` (the model and how it was run) and, per set,
    its records (SHA-256 of the written file) and its lm-eval task (SHA-256 of the YAML, which
    holds the generation settings, with this output's own path taken out)."""
    import hashlib

    from countrytune.hashing import sha256_file

    def task_sha256(ts: TaskSet) -> str:
        text = (out_dir / "tasks" / f"{ts.lm_eval_name}.yaml").read_text(encoding="utf-8")
        return hashlib.sha256(text.replace(str(out_dir.resolve()), "OUTPUT").encode()).hexdigest()

    return {"settings": settings,
            "sets": {ts.lm_eval_name: {"records_sha256": sha256_file(ts.data), "task_sha256": task_sha256(ts),
                                       "docs": ts.docs, "metric": ts.metric, "chat": ts.chat, "choices": ts.choices,
                                       "target": ts.target, "country": ts.country} for ts in sets}}


def write_base_fingerprint(out_dir: Path, fingerprint: dict) -> None:
    atomic_write(out_dir / "scores" / BASE_FINGERPRINT, json.dumps(fingerprint, indent=1))


def reuse_base_scores(earlier: Path, fingerprint: dict, out_dir: Path) -> dict[str, DocScores]:
    """The base's scores from an earlier eval output, written to `out_dir` as its own; refused
    unless they were made by the same model with the same settings on the same records asked
    the same way (a subset of the earlier sets is fine)."""
    path = earlier / "scores" / BASE_FINGERPRINT
    scores = load_scores(earlier, "base")
    if scores is None or not path.is_file():
        raise UserError(f"--base-scores {earlier}: no scores/base.json and scores/{BASE_FINGERPRINT}; "
                        f"give the --output folder of an earlier `countrytune eval`")
    theirs = json.loads(path.read_text(encoding="utf-8"))
    for key, mine in fingerprint["settings"].items():
        if theirs["settings"].get(key) != mine:
            raise UserError(f"--base-scores {earlier}: its base was scored with {key} "
                            f"{theirs['settings'].get(key)!r}, this eval's is {mine!r}; drop --base-scores "
                            f"to score the base again, or match the earlier eval")
    for name, mine in fingerprint["sets"].items():
        if theirs["sets"].get(name) != mine or name not in scores:
            raise UserError(f"--base-scores {earlier}: held-out set {name} "
                            + ("was not scored there" if name not in theirs["sets"] else
                               "differs there (other records, wording or scoring)")
                            + "; drop --base-scores to score the base again")
    reused = {name: scores[name] for name in fingerprint["sets"]}
    _write_scores(out_dir, "base", reused)
    return reused


def results(sets: list[TaskSet], base: dict[str, DocScores],
            adapter: dict[str, DocScores] | None) -> HeldoutResults:
    table: dict[str, dict] = {}
    asked: dict[tuple[str, str], list] = {}  # (translation task, target language) -> its sets
    for ts in sets:
        if ts.lm_eval_name not in base:
            raise UserError(f"no base scores for {ts.lm_eval_name}: the held-out sets changed since "
                            f"the base was scored; score the base again")
        row = compare(base[ts.lm_eval_name], adapter[ts.lm_eval_name] if adapter else None)
        if ts.metric == "chrf++":
            row = row.model_copy(update={"copy_source": copy_source_chrf(ts.data, base[ts.lm_eval_name].ids)})
            asked.setdefault((ts.task, ts.target), []).append(
                (base[ts.lm_eval_name], adapter[ts.lm_eval_name] if adapter else None))
        table.setdefault(ts.task, {})[ts.lang] = row
    for (task, target), pairs in asked.items():  # every direction into a language counts for it
        table.setdefault(f"{task}_language", {})[target] = language_consistency(pairs)
    return HeldoutResults(table)
