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
import hashlib
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
from countrytune.hashing import sha256_file
from countrytune.schema import Schema, read_yaml, validate

KIND = "sft-data"  # stats.json's `kind`: what --overwrite may replace


class LabelledSource(Schema):
    """Labelled files per language (CSV, JSONL, Parquet), read with prep's readers."""

    files: dict[str, list[str]]
    """Language code -> files. Relative paths are relative to the working directory."""
    text_field: str = "text"
    """Field or column holding the text that goes into the instruction."""
    label_field: str = "label"
    """Field or column holding the label."""
    id_field: str = "id"
    """Field or column holding the record's id (ids are made unique with the language)."""


class InstructionTemplate(Schema):
    """One wording of the instruction, and the answer word for each label in that wording."""

    id: str = Field(pattern=r"^[a-z0-9_-]+$")
    prompt_language: str = Field(pattern=r"^[a-z]{3}$")
    """ISO 639-3 code of the instruction's wording (the answer words follow it)."""
    system: str | None = None
    """A system turn; none lets the model's chat template add its default."""
    user: str
    """Jinja template over the record's fields, plus `lang` (code) and `language` (the
    profile's English name)."""
    answers: dict[str, str]
    """Label value -> the assistant's answer."""


class InstructionSet(Schema):
    """A recipe for `countrytune sft-data`."""

    name: str
    country: str
    """Country profile code (language names come from it)."""
    description: str = ""
    """What the records teach, for the data card."""
    sources: list[LabelledSource] = Field(min_length=1)
    templates: list[InstructionTemplate] = Field(min_length=1)
    """Each record gets one template, chosen by a stable hash of its language and id, so the
    wording varies across records and languages and a rerun gives the same records."""
    max_turn_chars: int = Field(4000, ge=1)
    """A turn longer than this (characters) makes the record a reject (`turn_too_long`)."""
    licence: str | None = None
    """Licence of the labelled data, carried into the data card."""

    @model_validator(mode="after")
    def _same_labels(self) -> InstructionSet:
        labels = set(self.templates[0].answers)
        for t in self.templates:
            if set(t.answers) != labels:
                raise ValueError(f"template {t.id!r} answers labels {sorted(t.answers)}, template "
                                 f"{self.templates[0].id!r} answers {sorted(labels)}: every template "
                                 f"must answer every label")
        ids = [t.id for t in self.templates]
        if len(set(ids)) != len(ids):
            raise ValueError(f"template ids must be unique: {ids}")
        return self


def _choose(templates: list[InstructionTemplate], lang: str, record_id: str) -> InstructionTemplate:
    h = hashlib.blake2b(f"{lang}\0{record_id}".encode(), digest_size=8).digest()
    return templates[int.from_bytes(h, "big") % len(templates)]


def build(spec: InstructionSet, out: Path, *, overwrite: bool = False, log=print) -> dict:
    """Write the instruction records of `spec` to `out`; returns stats.json's content."""
    import jinja2

    from countrytune.profiles import load_profile
    from countrytune.records import ReaderConfig, RecordReader
    from countrytune.document import Drop

    profile = load_profile(spec.country)
    names = {lang.code: lang.name for lang in profile.languages}
    unknown = sorted({lang for s in spec.sources for lang in s.files} - set(names))
    if unknown:
        raise UserError(f"languages {unknown} are not in the {spec.country} profile; add them there")
    _claim(out, overwrite)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    compiled = {t.id: (env.from_string(t.user), env.from_string(t.system) if t.system else None)
                for t in spec.templates}
    reader = RecordReader(ReaderConfig(), default_lang="und")
    inputs, rejects = [], []
    per_lang: dict[str, Counter] = {}
    templates_used, labels_kept = Counter(), Counter()
    with atomic_dir(out) as tmp:
        (tmp / "data").mkdir()
        (tmp / "rejects").mkdir()
        written = 0
        with (tmp / "data" / "train-00000.jsonl").open("w", encoding="utf-8") as f:
            for source in spec.sources:
                for lang, paths in sorted(source.files.items()):
                    counts = per_lang.setdefault(lang, Counter())
                    for path in paths:
                        if not Path(path).is_file():
                            raise UserError(f"{spec.name}: input {path} ({lang}): no such file")
                        inputs.append({"path": path, "lang": lang, "sha256": sha256_file(Path(path)),
                                       "bytes": Path(path).stat().st_size})
                        for ordinal, record, _raw in reader.records(path):
                            counts["in"] += 1
                            where = f"{path}:{ordinal}"
                            made = (record if isinstance(record, Drop)
                                    else _record(spec, source, compiled, record, lang, names[lang], where))
                            if isinstance(made, Drop):
                                counts["rejected"] += 1
                                rejects.append({"where": where, "lang": lang, "reason": made.reason,
                                                "detail": made.detail})
                                continue
                            f.write(chat_line(made))
                            counts["kept"] += 1
                            counts["chars"] += sum(len(m["content"]) for m in made["messages"])
                            written += 1
                            templates_used[made["template"]] += 1
                            labels_kept[f"{lang}:{made['label']}"] += 1
        with (tmp / "rejects" / "rejects.jsonl").open("w", encoding="utf-8") as f:
            for r in rejects:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        # The shape of prep's stats.json where they overlap (totals, languages, inputs, config,
        # created), so run.json's lineage and the export manifest read both the same way.
        stats = {
            "kind": KIND, "name": spec.name, "country": spec.country, "profile": spec.country,
            "description": spec.description, "licence": spec.licence,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": spec.model_dump(mode="json"), "inputs": inputs,
            # the same totals block as prep's stats.json: run.json's lineage reads docs_out
            "totals": {"records_in": sum(c["in"] for c in per_lang.values()), "docs_out": written,
                       "rejected": len(rejects)},
            "rejected": dict(Counter(r["reason"] for r in rejects)),
            "languages": {lang: {"name": names[lang], "docs_in": c["in"], "docs_out": c["kept"],
                                 "rejected": c["rejected"], "chars_out": c["chars"]}
                          for lang, c in sorted(per_lang.items())},
            "templates": {t.id: {"prompt_language": t.prompt_language, "records": templates_used[t.id]}
                          for t in spec.templates},
            "labels": dict(sorted(labels_kept.items())),
        }
        # The schema checks the contract: records in = written + rejected.
        write_stats(tmp, validate(PrepStats, stats, f"sft-data {spec.name} (a bug)"))
        (tmp / DATA_CARD_NAME).write_text(data_card(stats, spec), encoding="utf-8")
    log(f"{written:,} records written, {len(rejects):,} rejected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(stats['rejected'].items())) or 'none'}) -> {out}")
    return stats


def _record(spec: InstructionSet, source: LabelledSource, compiled: dict, record: dict, lang: str,
            language: str, where: str):
    """One chat record, or a Drop saying why the labelled record gives none."""
    import jinja2

    from countrytune.document import Drop

    label = record.get(source.label_field)
    label = label.strip() if isinstance(label, str) else label
    labels = list(spec.templates[0].answers)
    if label not in labels:
        return Drop("unknown_label", f"{source.label_field}={label!r}, expected one of {labels}")
    text = record.get(source.text_field)
    if not isinstance(text, str) or not text.strip():
        return Drop("empty_text", f"field {source.text_field!r} missing or empty")
    record_id = str(record.get(source.id_field) or where)
    template = _choose(spec.templates, lang, record_id)
    user, system = compiled[template.id]
    fields = {**record, "text": text.strip(), "lang": lang, "language": language}
    try:
        messages = ([{"role": "system", "content": system.render(**fields)}] if system else [])
        messages += [{"role": "user", "content": user.render(**fields)},
                     {"role": "assistant", "content": template.answers[label]}]
    except jinja2.UndefinedError as e:
        return Drop("template_field_missing", f"template {template.id}: {e}")
    problem = check_chat(messages, spec.max_turn_chars)
    if problem:
        return Drop(*problem)
    return {"id": f"{lang}:{record_id}", "lang": lang, "messages": messages, "label": label,
            "template": template.id, "source": where}


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
    lines += ["", "| template | wording | records | example instruction |", "|---|---|---:|---|"]
    for t in spec.templates:
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
