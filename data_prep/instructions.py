"""Instruction data from labelled country data: `countrytune sft-data`.

A country's labelled sets (sentiment, topics, ...) become chat-format JSONL for SFT: each
record's text goes into an instruction rendered from one of the recipe's templates, and the
assistant's answer is the label's word in that template's wording. The recipe is YAML
(`InstructionSet`, e.g. `recipes/id/sft-data-nusax.yaml`): sources, fields, templates, so a
country with other labelled data adds a file, not code.

Every record is checked (`check_chat`: role order, empty turns, over-long turns); a record
that cannot be used is a reject with its reason in `rejects/rejects.jsonl`, never dropped
silently: records in = records written + records rejected. The trainer applies the same
`check_chat` to any chat JSONL it reads.

Output (whole or not at all): `data/train-00000.jsonl` ({"id", "lang", "messages", "label",
"template", "source"}), `rejects/rejects.jsonl`, `stats.json` (with each input's SHA-256,
which `countrytune train` compares with its held-out suite) and `DATA_CARD.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path

from pydantic import Field, model_validator

from countrytune.artifacts.chat import chat_line, check_chat
from countrytune.artifacts.prep_output import (
    DATA_CARD_NAME,
    STATS_NAME,
    PrepStats,
    is_prep_output,
    read_stats,
    write_stats,
)
from countrytune.atomic import atomic_dir
from countrytune.errors import UserError
from countrytune.schema import Schema, read_yaml, validate
from data_prep.instruction_tasks import (
    InstructionTemplate,
    LabelledSource,
    Task,
    check_templates,
    classification,
    held_out_rows,
    translation,
)

KIND = "sft-data"  # stats.json's `kind`: what --overwrite may replace


class InstructionSet(Schema):
    """A recipe for `countrytune sft-data`: either one classification task given by `sources`
    and `templates` (the first recipes' form, whose records stay byte for byte the same), or
    `tasks`, each a classification or translation task (`data_prep.instruction_tasks.Task`)."""

    name: str
    country: str
    """Country profile code (language names come from it)."""
    description: str = ""
    """What the records teach, for the data card."""
    sources: list[LabelledSource] = []
    templates: list[InstructionTemplate] = []
    """Each record gets one template, chosen by a stable hash of its language and id, so the
    wording varies across records and languages and a rerun gives the same records."""
    tasks: list[Task] = []
    """Several tasks in one output (their records one after another, ids `task:lang:id`);
    instead of `sources` and `templates`."""
    max_turn_chars: int = Field(4000, ge=1)
    """A turn longer than this (characters) makes the record a reject (`turn_too_long`)."""
    licence: str | None = None
    """Licence of the labelled data, carried into the data card."""

    @model_validator(mode="after")
    def _one_form(self) -> InstructionSet:
        if bool(self.tasks) == bool(self.sources or self.templates):
            raise ValueError("give either sources and templates (one classification task) or tasks")
        tasks = self.all_tasks()  # each task validates itself; the legacy form builds one here
        ids = [t.id for task in tasks for t in task.templates]
        if len(set(ids)) != len(ids):
            raise ValueError(f"template ids must be unique: {ids}")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        return self

    @property
    def legacy(self) -> bool:
        return not self.tasks

    def all_tasks(self) -> list[Task]:
        if self.tasks:
            return list(self.tasks)
        return [Task(name="classification", kind="classification", sources=self.sources,
                     templates=self.templates)]


def build(spec: InstructionSet, out: Path, *, overwrite: bool = False, log=print) -> dict:
    """Write the instruction records of `spec` to `out`; returns stats.json's content."""
    import jinja2

    from countrytune.profiles import load_profile
    from countrytune.records import ReaderConfig, RecordReader

    profile = load_profile(spec.country)
    names = {lang.code: lang.name for lang in profile.languages}
    tasks = spec.all_tasks()
    unknown = sorted({lang for task in tasks for lang in task.languages()} - set(names))
    if unknown:
        raise UserError(f"languages {unknown} are not in the {spec.country} profile; add them there")
    for task in tasks:
        check_templates(task, names)
    _claim(out, overwrite)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    compiled = {t.id: (env.from_string(t.user), env.from_string(t.system) if t.system else None)
                for task in tasks for t in task.templates}
    reader = RecordReader(ReaderConfig(), default_lang="und")
    inputs, rejects = [], []
    per_lang: dict[str, Counter] = {}
    per_task: dict[str, dict[str, Counter]] = {}
    templates_used, labels_kept = Counter(), Counter()
    with atomic_dir(out) as tmp:
        (tmp / "data").mkdir()
        (tmp / "rejects").mkdir()
        held: dict[str, list[str]] = {}
        by_lang: dict[str, list[str]] = {}  # heldout/<task>/<lang>.jsonl: what a suite scores
        with (tmp / "data" / "train-00000.jsonl").open("w", encoding="utf-8") as f:
            for task in tasks:
                make = classification if task.kind == "classification" else translation
                extra = {"legacy": spec.legacy} if task.kind == "classification" else {}
                for event, lang, made in make(task, compiled, reader, names, spec.max_turn_chars,
                                              inputs, **extra):
                    counts = per_lang.setdefault(lang, Counter())
                    in_task = per_task.setdefault(task.name, {}).setdefault(lang, Counter())
                    counts["in"] += 1
                    in_task["in"] += 1
                    counts[event] += 1
                    in_task[event] += 1
                    if event == "rejected":
                        rejects.append({"where": made["where"], "lang": lang, "reason": made["reason"],
                                        "detail": made["detail"]})
                        continue
                    if event == "held_out":
                        row = {"id": made["id"], "text": made.pop("text"), "label": made["label"]}
                        held.setdefault(task.hold_out.file, []).append(chat_line(made))
                        by_lang.setdefault(held_out_rows(task.hold_out.file, lang), []).append(
                            json.dumps(row, ensure_ascii=False) + "\n")
                        continue
                    f.write(chat_line(made))
                    counts["chars"] += sum(len(m["content"]) for m in made["messages"])
                    templates_used[made["template"]] += 1
                    if made["label"] is not None:
                        labels_kept[f"{lang}:{made['label']}" if spec.legacy
                                    else f"{task.name}:{lang}:{made['label']}"] += 1
        for task in tasks:  # a held-out file is written even when empty, so an eval finds it
            if task.hold_out:
                (tmp / "heldout").mkdir(exist_ok=True)
                (tmp / task.hold_out.file).write_text("".join(held.get(task.hold_out.file, [])),
                                                      encoding="utf-8")
                for lang in sorted(task.languages()):
                    rows = held_out_rows(task.hold_out.file, lang)
                    (tmp / rows).parent.mkdir(exist_ok=True)
                    (tmp / rows).write_text("".join(by_lang.get(rows, [])), encoding="utf-8")
        with (tmp / "rejects" / "rejects.jsonl").open("w", encoding="utf-8") as f:
            for r in rejects:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        written = sum(c["kept"] for c in per_lang.values())
        held_out = sum(c["held_out"] for c in per_lang.values())
        # The shape of prep's stats.json where they overlap (totals, languages, inputs, config,
        # created), so run.json's lineage and the export manifest read both the same way.
        stats = {
            "kind": KIND, "name": spec.name, "country": spec.country, "profile": spec.country,
            "description": spec.description, "licence": spec.licence,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": spec.model_dump(mode="json"), "inputs": inputs,
            # the same totals block as prep's stats.json: run.json's lineage reads docs_out.
            # Held-out records are not training records: they are counted per language and task.
            "totals": {"records_in": sum(c["in"] for c in per_lang.values()) - held_out,
                       "docs_out": written, "rejected": len(rejects)},
            "rejected": dict(Counter(r["reason"] for r in rejects)),
            "languages": {lang: _lang_stats(names[lang], c, lang, per_task, spec.legacy)
                          for lang, c in sorted(per_lang.items())},
            "templates": {t.id: {"prompt_language": t.prompt_language, "records": templates_used[t.id],
                                 **({} if spec.legacy else {"task": task.name})}
                          for task in tasks for t in task.templates},
            "labels": dict(sorted(labels_kept.items())),
        }
        # The schema checks the contract: records in = written + rejected.
        write_stats(tmp, validate(PrepStats, stats, f"sft-data {spec.name} (a bug)"))
        (tmp / DATA_CARD_NAME).write_text(data_card(stats, spec), encoding="utf-8")
    log(f"{written:,} records written, {len(rejects):,} rejected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(stats['rejected'].items())) or 'none'})"
        + (f", {held_out:,} held out" if held_out else "") + f" -> {out}")
    return stats


def _lang_stats(name: str, c: Counter, lang: str, per_task: dict, legacy: bool) -> dict:
    row = {"name": name, "docs_in": c["in"] - c["held_out"], "docs_out": c["kept"],
           "rejected": c["rejected"], "chars_out": c["chars"]}
    if not legacy:
        row["held_out"] = c["held_out"]
        row["tasks"] = {task: {k: langs[lang][k] for k in ("in", "kept", "rejected", "held_out")}
                        for task, langs in per_task.items() if lang in langs}
    return row


def _claim(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    ours = is_prep_output(out) and read_stats(out / STATS_NAME).kind == KIND
    if not overwrite:
        raise UserError(f"--output {out} exists; pass --overwrite to rebuild it" if ours else
                        f"--output {out} exists and is not an sft-data output; choose a new folder")
    if not ours:
        raise UserError(f"--output {out} is not an sft-data output (no stats.json of kind {KIND!r}); "
                        f"--overwrite replaces only sft-data outputs")


def data_card(stats: dict, spec: InstructionSet) -> str:
    lines = [f"# Instruction data: {stats['name']}", "", stats["description"] or "", "",
             (f"{stats['totals']['docs_out']:,} chat records from {stats['totals']['records_in']:,} labelled "
              f"records ({stats['totals']['rejected']:,} rejected, reasons below). "
              f"Licence of the labelled data: {stats['licence'] or 'not stated'}."), "",
             "| language | name | in | kept | rejected |", "|---|---|---:|---:|---:|"]
    for lang, c in stats["languages"].items():
        lines.append(f"| {lang} | {c['name']} | {c['docs_in']} | {c['docs_out']} | {c['rejected']} |")
    if not spec.legacy:
        lines += ["", "| task | language | in | kept | rejected | held out |", "|---|---|---:|---:|---:|---:|"]
        for task in spec.tasks:
            for lang, c in stats["languages"].items():
                if (n := c["tasks"].get(task.name)):
                    lines.append(f"| {task.name} | {lang} | {n['in']} | {n['kept']} | {n['rejected']} | "
                                 f"{n['held_out']} |")
            if task.hold_out:
                lines.append(f"| {task.name} | held out: `{task.hold_out.file}` (1 in {task.hold_out.one_in}, "
                             f"never in data/; per language for an eval suite: "
                             f"`{held_out_rows(task.hold_out.file, '<lang>')}`) | | | | |")
    lines += ["", "| template | wording | records | example instruction |", "|---|---|---:|---|"]
    for task in spec.all_tasks():
        for t in task.templates:
            example = t.user.replace("\n", " ").replace("|", "\\|")
            lines.append(f"| {t.id} | {t.prompt_language} | {stats['templates'][t.id]['records']} | {example} |")
    lines += ["", "Rejected: " + (", ".join(f"{k} {v}" for k, v in sorted(stats["rejected"].items())) or "none")
              + " (each in rejects/rejects.jsonl with where and why).", "",
              "Inputs (SHA-256):", ""]
    lines += [f"- `{i['path']}` ({i['lang']}) `{i['sha256']}`" for i in stats["inputs"]]
    return "\n".join(lines) + "\n"


EXAMPLE = """example:
  countrytune sft-data recipes/id/sft-data-nusax.yaml --output out/sft-nusax
  countrytune train recipes/id/smollm2-sft-lora.yaml --output runs/id-smollm2-sft
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft-data", help="turn labelled country data into chat-format SFT records",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, help="an InstructionSet YAML (e.g. recipes/id/sft-data-nusax.yaml)")
    p.add_argument("--output", type=Path, required=True, help="folder to write (data/, rejects/, stats.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sft-data output there")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = validate(InstructionSet, read_yaml(args.recipe), str(args.recipe))
    build(spec, args.output, overwrite=args.overwrite,
          log=lambda m: print(f"[countrytune sft-data] {m}", file=sys.stderr, flush=True))
    return 0
