"""The tasks of an sft-data recipe: what each kind of task reads and which chat records it makes.

Two kinds, both data only (`recipes/id/sft-data-multitask.yaml`):

- `classification`: a labelled record's text goes into the instruction, the answer is the label's
  word in the template's wording (NusaX sentiment, NusaParagraph rhetoric mode). `hold_out`
  keeps a stable share of the records (a hash of task, language and id) out of training and
  writes them to a file of their own, for an eval to score.
- `translation`: parallel files per language (the same id is the same sentence); each
  `directions` pair [source, target] asks for the target sentence. Pairs are matched by id; an
  id present on one side only is a reject (`missing_pair`), never a silent drop.

A template may name the record languages it is for (`languages`: an instruction written in
Javanese for Javanese records); each record gets one of the templates that apply to it, chosen
by a stable hash, so a rerun gives the same records. The generators yield events the builder
counts: ("kept" | "held_out", lang, record) or ("rejected", lang, {where, reason, detail}).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, model_validator

from countrytune.artifacts.chat import check_chat, translation_record_id
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from countrytune.schema import Schema


class LabelledSource(Schema):
    """Labelled (or parallel) files per language (CSV, JSONL, Parquet), read with prep's readers."""

    files: dict[str, list[str]]
    """Language code -> files. Relative paths are relative to the working directory."""
    text_field: str = "text"
    """Field or column holding the text that goes into the instruction."""
    label_field: str = "label"
    """Field or column holding the label (classification only)."""
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
    language's name in the template's wording: the task's `language_names`, else the
    profile's English name). Translation adds `source_language`, `target_language` (names)
    and `source_lang`, `target_lang` (codes); `text` is the source sentence."""
    answers: dict[str, str] = {}
    """Label value -> the assistant's answer (classification; translation answers with the
    target sentence)."""
    languages: list[str] | None = None
    """Only for records in these languages (translation: either side of the pair); none: all."""


class HoldOut(Schema):
    """A stable share of a task's records kept out of training, written to a file of its own."""

    one_in: int = Field(ge=2)
    """Hold out 1 record in this many (by a hash of task, language and id)."""
    file: str = Field(pattern=r"^heldout/[A-Za-z0-9_.-]+\.jsonl$")
    """Where in the output folder (under heldout/, never data/, which training reads) the
    held-out chats go, all languages in one file. The same records as an eval suite's
    classification set reads them (id, text, label; one file per language) go beside it, to
    `held_out_rows(file, lang)`: heldout/rhetoric.jsonl -> heldout/rhetoric/jav.jsonl."""


def held_out_rows(file: str, lang: str) -> str:
    """The per-language file of a hold_out's records (see HoldOut.file)."""
    return f"{file.removesuffix('.jsonl')}/{lang}.jsonl"


class Task(Schema):
    """One task of a recipe: its inputs, its templates, and (translation) its directions."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    """Prefix of the record ids (`name:lang:id`) and the key of its counts."""
    kind: Literal["classification", "translation"]
    sources: list[LabelledSource] = Field(min_length=1)
    templates: list[InstructionTemplate] = Field(min_length=1)
    directions: list[tuple[str, str]] = []
    """Translation: [source language, target language] pairs, each a direction of its own."""
    language_names: dict[str, dict[str, str]] = {}
    """Template wording (ISO 639-3) -> language code -> the language's name in that wording
    ("bahasa Jawa"); English falls back to the profile's names."""
    hold_out: HoldOut | None = None
    """Classification only: records kept out of training for an eval."""

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        if self.kind == "classification":
            labels = set(self.templates[0].answers)
            if not labels:
                raise ValueError(f"task {self.name}: classification templates need answers")
            for t in self.templates:
                if set(t.answers) != labels:
                    raise ValueError(f"template {t.id!r} answers labels {sorted(t.answers)}, template "
                                     f"{self.templates[0].id!r} answers {sorted(labels)}: every template "
                                     f"must answer every label")
            if self.directions:
                raise ValueError(f"task {self.name}: directions are for translation tasks")
        else:
            if not self.directions:
                raise ValueError(f"task {self.name}: a translation task needs directions")
            if self.hold_out or any(t.answers for t in self.templates):
                raise ValueError(f"task {self.name}: translation takes no answers and no hold_out "
                                 f"(hold out whole files instead)")
            have = {lang for s in self.sources for lang in s.files}
            missing = sorted({lang for pair in self.directions for lang in pair} - have)
            if missing:
                raise ValueError(f"task {self.name}: directions name {missing}, which no source gives")
        return self

    def languages(self) -> set[str]:
        return {lang for s in self.sources for lang in s.files}


def choose(templates: list[InstructionTemplate], lang: str, record_id: str) -> InstructionTemplate:
    h = hashlib.blake2b(f"{lang}\0{record_id}".encode(), digest_size=8).digest()
    return templates[int.from_bytes(h, "big") % len(templates)]


def held_out(task: Task, lang: str, record_id: str) -> bool:
    if task.hold_out is None:
        return False
    h = hashlib.blake2b(f"heldout\0{task.name}\0{lang}\0{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % task.hold_out.one_in == 0


def applicable(task: Task, *langs: str) -> list[InstructionTemplate]:
    return [t for t in task.templates if t.languages is None or set(t.languages) & set(langs)]


def name_in(task: Task, template: InstructionTemplate, lang: str, english: dict[str, str]) -> str | None:
    names = task.language_names.get(template.prompt_language, {})
    if lang in names:
        return names[lang]
    return english.get(lang) if template.prompt_language == "eng" else None


def check_templates(task: Task, english: dict[str, str]) -> None:
    """Every record language has a template, and every name a template needs is given."""
    if task.kind == "classification":
        for lang in sorted(task.languages()):
            if not applicable(task, lang):
                raise UserError(f"task {task.name}: no template applies to {lang}")
        return
    for src, tgt in task.directions:
        candidates = applicable(task, src, tgt)
        if not candidates:
            raise UserError(f"task {task.name}: no template applies to {src}>{tgt}")
        for t in candidates:
            for lang in (src, tgt):
                if name_in(task, t, lang, english) is None:
                    raise UserError(f"task {task.name}: template {t.id} ({t.prompt_language}) needs the "
                                    f"name of {lang}: add language_names.{t.prompt_language}.{lang}")


def _inputs(source: LabelledSource, lang: str, name: str, inputs: list[dict]) -> Iterator[str]:
    for path in source.files.get(lang, []):
        if not Path(path).is_file():
            raise UserError(f"{name}: input {path} ({lang}): no such file")
        inputs.append({"path": path, "lang": lang, "sha256": sha256_file(Path(path)),
                       "bytes": Path(path).stat().st_size})
        yield path


def _task_records(task: Task, reader, inputs: list[dict]) -> Iterator[tuple[LabelledSource, str, str, Any]]:
    """Every line of the task's files: source by source, language by language (sorted), file by
    file, as (source, lang, where, record). `record` is the line's fields, or prep's `Drop` for a
    line that cannot be read (the caller yields `_unreadable` for it)."""
    for source in task.sources:
        for lang in sorted(source.files):
            for path in _inputs(source, lang, task.name, inputs):
                for ordinal, record, _raw in reader.records(path):
                    yield source, lang, f"{path}:{ordinal}", record


def _unreadable(lang: str, where: str, drop) -> tuple[str, str, dict]:
    """The reject of a line prep's reader could not read, under the line's language."""
    return "rejected", lang, {"where": where, "reason": drop.reason, "detail": drop.detail}


def _messages(template: InstructionTemplate, compiled: dict, fields: dict, answer: str,
              max_turn_chars: int):
    """The chat turns, or (reason, detail) when the template or the chat checks refuse them."""
    import jinja2

    user, system = compiled[template.id]
    try:
        messages = ([{"role": "system", "content": system.render(**fields)}] if system else [])
        messages += [{"role": "user", "content": user.render(**fields)},
                     {"role": "assistant", "content": answer}]
    except jinja2.UndefinedError as e:
        return ("template_field_missing", f"template {template.id}: {e}")
    return check_chat(messages, max_turn_chars) or messages


def classification(task: Task, compiled: dict, reader, english: dict[str, str], max_turn_chars: int,
                   inputs: list[dict], legacy: bool = False) -> Iterator[tuple[str, str, dict]]:
    from countrytune.document import Drop

    labels = list(task.templates[0].answers)
    for source, lang, where, record in _task_records(task, reader, inputs):
        if isinstance(record, Drop):
            yield _unreadable(lang, where, record)
            continue
        label = record.get(source.label_field)
        label = label.strip() if isinstance(label, str) else label
        text = record.get(source.text_field)
        if label not in labels:
            why = ("unknown_label", f"{source.label_field}={label!r}, expected one of {labels}")
        elif not isinstance(text, str) or not text.strip():
            why = ("empty_text", f"field {source.text_field!r} missing or empty")
        else:
            why = None
        if why:
            yield "rejected", lang, {"where": where, "reason": why[0], "detail": why[1]}
            continue
        record_id = str(record.get(source.id_field) or where)
        # The legacy single-task recipe keeps its choice key (and so its records).
        template = choose(applicable(task, lang), lang if legacy else f"{task.name}\0{lang}", record_id)
        fields = {**record, "text": text.strip(), "lang": lang,
                  "language": name_in(task, template, lang, english) or english[lang]}
        made = _messages(template, compiled, fields, template.answers[label], max_turn_chars)
        if isinstance(made, tuple):
            yield "rejected", lang, {"where": where, "reason": made[0], "detail": made[1]}
            continue
        out = {"id": f"{lang}:{record_id}" if legacy else f"{task.name}:{lang}:{record_id}",
               "lang": lang, "messages": made, "label": label, "template": template.id, "source": where}
        if held_out(task, lang, record_id):  # with its text, for the suite's per-language files
            yield "held_out", lang, {**out, "text": fields["text"]}
        else:
            yield "kept", lang, out


def translation(task: Task, compiled: dict, reader, english: dict[str, str], max_turn_chars: int,
                inputs: list[dict]) -> Iterator[tuple[str, str, dict]]:
    """Each direction's records: one per id in either side's files. A line that cannot be read
    is a reject of its language once; an id on one side only, a duplicate id or an empty
    sentence is a reject of the direction (counted under the target language)."""
    from countrytune.document import Drop

    # lang -> id -> (text, where) or a duplicate's where. Every language named gets its side
    # before any file is read, so a language whose files hold no record still pairs (as
    # missing_pair rejects) instead of failing the lookup below.
    sentences: dict[str, dict[str, Any]] = {lang: {} for source in task.sources for lang in source.files}
    for source, lang, where, record in _task_records(task, reader, inputs):
        if isinstance(record, Drop):
            yield _unreadable(lang, where, record)
            continue
        side = sentences[lang]
        record_id = str(record.get(source.id_field) or where)
        text = record.get(source.text_field)
        text = text.strip() if isinstance(text, str) else ""
        side[record_id] = ("duplicate", where) if record_id in side else (text, where)
    for src, tgt in task.directions:
        a, b = sentences[src], sentences[tgt]
        for record_id in sorted(a.keys() | b.keys(), key=lambda i: (len(i), i)):
            direction = f"{src}>{tgt}"
            where = (a.get(record_id) or b.get(record_id))[1]
            if record_id not in a or record_id not in b:
                lacking = src if record_id not in a else tgt
                yield "rejected", tgt, {"where": where, "reason": "missing_pair",
                                        "detail": f"{direction} id {record_id}: no {lacking} sentence"}
                continue
            (text, where), (answer, where_tgt) = a[record_id], b[record_id]
            if "duplicate" in (text, answer):
                yield "rejected", tgt, {"where": where if text == "duplicate" else where_tgt,
                                        "reason": "duplicate_id", "detail": f"{direction} id {record_id}"}
                continue
            if not text or not answer:
                yield "rejected", tgt, {"where": where if not text else where_tgt, "reason": "empty_text",
                                        "detail": f"{direction} id {record_id}: empty sentence"}
                continue
            template = choose(applicable(task, src, tgt), f"{task.name}\0{direction}", record_id)
            fields = {"text": text, "lang": tgt, "source_lang": src, "target_lang": tgt,
                      "source_language": name_in(task, template, src, english),
                      "target_language": name_in(task, template, tgt, english)}
            made = _messages(template, compiled, fields, answer, max_turn_chars)
            if isinstance(made, tuple):
                yield "rejected", tgt, {"where": where, "reason": made[0], "detail": made[1]}
                continue
            yield "kept", tgt, {"id": translation_record_id(task.name, src, tgt, record_id), "lang": tgt,
                                "messages": made, "label": None, "template": template.id, "source": where}
