"""A country's held-out evaluation suite, and turning it into lm-evaluation-harness tasks.

The suite (`recipes/<country>/heldout.yaml`) names files per language: held-out text scored
as bits-per-byte, labelled sets scored as multiple choice or by the answer written, and
parallel files per translation direction scored by chrF++ of what the model writes. `materialise` reads them with
prep's readers (JSONL, CSV, text, Parquet), writes each language's records as JSONL and one
lm-eval task YAML per language beside them, so the same tasks can be rerun with stock
`lm_eval --include_path OUT/tasks`. Records that cannot be used are counted by reason and
written to `OUT/heldout/rejects.jsonl`, never dropped silently.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from countrytune.errors import UserError
from countrytune.schema import Schema, read_yaml, validate

BITS_PER_BYTE = "bits_per_byte"
TEMPLATES = Path(__file__).parent / "lm_eval_tasks"
TASK_PREFIX = "ct_"  # keeps our per-language task names apart from lm-eval's own


class ClassificationSpec(Schema):
    """A labelled set, per language: scored as multiple choice over the answer words, or by
    the answer the model writes (greedy) matched exactly against them."""

    files: dict[str, list[str]]
    """Language code -> labelled files (JSONL, CSV, Parquet)."""
    prompt: str = "{{text}}"
    """Jinja template over a record's fields. Plain: the answer word is scored after it and a
    space. Chat: it is the user's turn, and the answer is the assistant's reply."""
    chat: bool = False
    """Render the prompt with the model's chat template (as an instruction-tuned model is
    asked); lm-eval's `--apply_chat_template` reproduces it."""
    scoring: Literal["multiple_choice", "generate"] = "multiple_choice"
    """multiple_choice: the most likely answer word is the prediction (metric acc).
    generate: greedy decoding up to a new line or the end of the turn; the prediction is the
    answer word the text equals, ignoring case, spaces and punctuation (metric exact_match;
    any other text is wrong for every label)."""
    max_new_tokens: int = Field(8, ge=1)
    """generate: most tokens written per answer."""
    label_field: str = "label"
    """Field holding the label."""
    choices: dict[str, str]
    """Label value -> the answer word scored for it, in the order given."""
    max_docs_per_language: int | None = Field(None, ge=1)
    """Score at most this many records per language (the first ones in file order)."""


class TranslationFiles(Schema):
    """One direction's parallel files: record i of `reference` translates record i of `source`."""

    source: list[str]
    """Files of source sentences (JSONL, CSV, text, Parquet; the suite's `text_field`)."""
    reference: list[str]
    """Files of reference translations, record for record (NusaX's files of two languages are)."""


class TranslationSpec(Schema):
    """Translation, per direction: greedy decoding of the prompt up to a new line or the end of
    the turn, scored by chrF++ (sacrebleu's CHRF(word_order=2)) against the reference, and by
    whether the answer is in the language asked for (the country's language identifier)."""

    directions: dict[str, TranslationFiles]
    """`<source>-<target>` language codes (e.g. `ind-jav`) -> its parallel files."""
    prompt: str = "Translate this {{source_language}} text into {{target_language}}.\n\n{{text}}"
    """Jinja template over `text` (the source sentence), `source_language` and
    `target_language` (the names in `language_names`, else the codes)."""
    language_names: dict[str, str] = {}
    """Language code -> the name the prompt uses (e.g. jav: Javanese)."""
    chat: bool = False
    """Render the prompt with the model's chat template (an instruction-tuned model)."""
    max_new_tokens: int = Field(128, ge=1)
    """Most tokens written per translation."""
    max_docs_per_language: int | None = Field(None, ge=1)
    """Score at most this many sentences per direction (the first ones in file order)."""

    @model_validator(mode="after")
    def _directions(self) -> TranslationSpec:
        for key in self.directions:
            source, sep, target = key.partition("-")
            if not (sep and source.isalnum() and target.isalnum() and key.islower()) or source == target:
                raise ValueError(f"translation direction {key!r}: write it <source>-<target>, two "
                                 f"different lower-case language codes (e.g. ind-jav)")
        return self


class EvalSuite(Schema):
    """Held-out sets a country's models are judged on, base against adapter. No file here may
    also be training data: `countrytune train` refuses a recipe whose data came from one."""

    country: str
    """Country profile code."""
    text: dict[str, list[str]] = {}
    """Language code -> held-out text files, scored as bits-per-byte."""
    text_field: str = "text"
    """Field (JSONL, Parquet) or column (CSV) holding the text."""
    max_docs_per_language: int | None = Field(None, ge=1)
    """Score at most this many held-out documents per language (the first in file order)."""
    classification: dict[str, ClassificationSpec] = {}
    """Task name -> a labelled set (e.g. `nusax_sentiment`)."""
    translation: dict[str, TranslationSpec] = {}
    """Task name -> translation directions (e.g. `nusax_mt`); results also get the row
    `<name>_language`: the share of answers in the target language, per target language."""

    @model_validator(mode="after")
    def _names(self) -> EvalSuite:
        both = set(self.classification) & set(self.translation)
        if both:
            raise ValueError(f"task name(s) {sorted(both)} used for classification and translation")
        for name in [*self.classification, *self.translation]:
            if name == BITS_PER_BYTE or not name.replace("_", "").isalnum() or not name.islower():
                raise ValueError(f"classification task name {name!r}: use lower-case letters, "
                                 f"digits and _ (and not {BITS_PER_BYTE!r})")
        return self

    def task_names(self) -> list[str]:
        return ([BITS_PER_BYTE] if self.text else []) + list(self.classification) + list(self.translation)

    def files(self) -> list[Path]:
        """Every file the suite reads (for the train/eval overlap check)."""
        paths = [p for files in self.text.values() for p in files]
        paths += [p for spec in self.classification.values() for files in spec.files.values() for p in files]
        paths += [p for spec in self.translation.values() for d in spec.directions.values()
                  for p in [*d.source, *d.reference]]
        return [Path(p) for p in paths]


def load_suite(path: Path | str) -> EvalSuite:
    return validate(EvalSuite, read_yaml(Path(path)), str(path))


@dataclass
class TaskSet:
    """One (task, language) pair written for lm-eval."""

    task: str
    lang: str
    lm_eval_name: str
    data: Path
    docs: int
    metric: str
    """bits_per_byte (lower is better), acc, exact_match or chrf++ (higher is better)."""
    rejected: Counter = field(default_factory=Counter)
    chat: bool = False
    """Prompts go through the model's chat template."""
    choices: list[str] = field(default_factory=list)
    """Classification: the answer words, in label order."""
    target: str | None = None
    """Translation: the language asked for (`lang` is the direction, e.g. ind-jav)."""
    country: str | None = None
    """Translation: the country profile whose language identifier judges the answers."""


def _reader(text_field: str = "text"):
    from countrytune.records import ReaderConfig, RecordReader

    return RecordReader(ReaderConfig(text_field=text_field), default_lang="und")


def _records(paths: list[str], rejects: list[dict], task: str, lang: str):
    """Readable records of the files, in order; unreadable ones go to `rejects`."""
    from countrytune.document import Drop

    reader = _reader()
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"held-out file {path} ({task}, {lang}): no such file")
        for ordinal, record, _raw in reader.records(path):
            where = f"{path}:{ordinal}"
            if isinstance(record, Drop):
                rejects.append({"task": task, "lang": lang, "where": where, "reason": record.reason,
                                "detail": record.detail})
                continue
            yield where, record


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


class _TemplateLoader(yaml.SafeLoader):
    """Reads our task templates; lm-eval's `!function` tags are kept as their text."""


_TemplateLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read_template(name: str) -> dict:
    return yaml.load((TEMPLATES / name).read_text(encoding="utf-8"), Loader=_TemplateLoader)


def _task_yaml(tasks_dir: Path, template: str, name: str, data: Path, generation: dict | None = None) -> None:
    text = (f"include: {template}\ntask: {name}\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n")
    if generation:  # an included file's generation_kwargs are replaced whole, not merged
        included = _read_template(template)["generation_kwargs"]
        text += f"generation_kwargs: {json.dumps({**included, **generation})}\n"
    (tasks_dir / f"{name}.yaml").write_text(text, encoding="utf-8")


def _text_rows(suite: EvalSuite, lang: str, files: list[str], rejects: list[dict]) -> list[dict]:
    from countrytune.document import Drop

    rows: list[dict] = []
    limit = suite.max_docs_per_language
    reader = _reader(suite.text_field)  # prep's rules for a text (NUL bytes, UTF-8, length...)
    for where, record in _records(files, rejects, BITS_PER_BYTE, lang):
        text = reader.text_of(record)
        if isinstance(text, Drop):
            rejects.append({"task": BITS_PER_BYTE, "lang": lang, "where": where, "reason": text.reason,
                            "detail": text.detail})
            continue
        if limit is None or len(rows) < limit:
            rows.append({"id": where, "text": text})
    # lm-eval batches rolling windows in file order and pads each batch to its longest: sorted
    # by length, batches of 8 score 100 NusaX jav sentences in 11 s on CPU, against 19 s.
    return sorted(rows, key=lambda r: len(r["text"]))


def text_documents(suite: EvalSuite, lang: str) -> list[str]:
    """The held-out texts of one language (unusable records left out; `eval` writes those to
    its rejects file)."""
    return [r["text"] for r in _text_rows(suite, lang, suite.text[lang], [])]


def _choice_rows(name: str, spec: ClassificationSpec, lang: str, rejects: list[dict]) -> list[dict]:
    import jinja2
    import jinja2.meta

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = env.from_string(spec.prompt)
    used_fields = sorted(jinja2.meta.find_undeclared_variables(env.parse(spec.prompt)))
    labels, words = list(spec.choices), list(spec.choices.values())
    rows: list[dict] = []
    for where, record in _records(spec.files[lang], rejects, name, lang):
        label = record.get(spec.label_field)
        reason = None
        empty = [f for f in used_fields if f in record and not str(record[f] or "").strip()]
        if label not in spec.choices:
            reason, detail = "unknown_label", f"{spec.label_field}={label!r}, expected one of {labels}"
        elif empty:
            reason, detail = "empty_field", f"prompt field(s) {empty} empty"
        else:
            try:
                query = template.render(**record)
            except jinja2.UndefinedError as e:
                reason, detail = "prompt_field_missing", str(e)
            else:
                if not query.strip():
                    reason, detail = "empty_prompt", ""
        if reason:
            rejects.append({"task": name, "lang": lang, "where": where, "reason": reason, "detail": detail})
            continue
        if spec.max_docs_per_language is None or len(rows) < spec.max_docs_per_language:
            rows.append({"id": where, "query": query, "choices": words, "gold": labels.index(label),
                         "answer": spec.choices[label]})
    return rows


def _translation_rows(name: str, spec: TranslationSpec, direction: str, text_field: str,
                      rejects: list[dict]) -> list[dict]:
    """Source and reference sentences paired record for record; a pair with an unusable side
    is rejected whole."""
    import jinja2

    from countrytune.document import Drop

    source_lang, _, target_lang = direction.partition("-")
    files = spec.directions[direction]
    reader = _reader(text_field)
    sides = []
    for paths in (files.source, files.reference):
        texts = []
        for where, record in _records(paths, rejects, name, direction):
            texts.append((where, reader.text_of(record)))
        sides.append(texts)
    if len(sides[0]) != len(sides[1]):
        raise UserError(f"translation {name} {direction}: {len(sides[0])} source records and "
                        f"{len(sides[1])} references; the files must be parallel, record for record")
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(spec.prompt)
    names = {"source_language": spec.language_names.get(source_lang, source_lang),
             "target_language": spec.language_names.get(target_lang, target_lang)}
    rows: list[dict] = []
    for (where, source), (ref_where, reference) in zip(*sides):
        bad = next((t for t in (source, reference) if isinstance(t, Drop)), None)
        if bad is not None:
            rejects.append({"task": name, "lang": direction, "where": f"{where} / {ref_where}",
                            "reason": bad.reason, "detail": bad.detail})
            continue
        if spec.max_docs_per_language is None or len(rows) < spec.max_docs_per_language:
            rows.append({"id": where, "query": template.render(text=source, **names), "source": source,
                         "reference": reference})
    return rows


def materialise(suite: EvalSuite | None, out_dir: Path, *, tasks: list[str] | None = None,
                languages: list[str] | None = None, extra_text: dict[str, list[str]] | None = None,
                max_docs: int | None = None) -> list[TaskSet]:
    """Write the selected sets as JSONL plus lm-eval task YAMLs under `out_dir`.

    `extra_text` (language -> files) adds bits-per-byte sets, replacing the suite's files for
    a language it also names; `max_docs` caps every set's records per language (quick runs).
    Returns what was written, in a stable order."""
    text = dict(suite.text) if suite else {}
    text.update(extra_text or {})
    classification = dict(suite.classification) if suite else {}
    translation = dict(suite.translation) if suite else {}
    known = ([BITS_PER_BYTE] if text else []) + list(classification) + list(translation)
    chosen = tasks or known
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise UserError(f"unknown evaluation task(s) {unknown}; this suite has {known}")
    data_dir, tasks_dir = out_dir / "heldout", out_dir / "tasks"
    for d in (data_dir, tasks_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for template in [*TEMPLATES.glob("_*_yaml"), TEMPLATES / "ct_chrf.py"]:
        shutil.copyfile(template, tasks_dir / template.name)
    rejects: list[dict] = []
    written: list[TaskSet] = []
    field_suite = suite or EvalSuite(country="-")
    if max_docs:
        field_suite = field_suite.model_copy(update={"max_docs_per_language": max_docs})
        classification = {k: v.model_copy(update={"max_docs_per_language": max_docs})
                          for k, v in classification.items()}
        translation = {k: v.model_copy(update={"max_docs_per_language": max_docs})
                       for k, v in translation.items()}
    plan = [(BITS_PER_BYTE, lang) for lang in sorted(text)] if BITS_PER_BYTE in chosen else []
    plan += [(name, lang) for name in chosen if name in classification
             for lang in sorted(classification[name].files)]
    plan += [(name, direction) for name in chosen if name in translation
             for direction in sorted(translation[name].directions)]
    for task, lang in plan:
        target = lang.partition("-")[2] if task in translation else None
        if languages and lang not in languages and target not in languages:
            continue
        before = len(rejects)
        chat, choices, generation = False, [], None
        if task in translation:
            spec = translation[task]
            rows, chat = _translation_rows(task, spec, lang, field_suite.text_field, rejects), spec.chat
            template, metric, generation = "_translate_yaml", "chrf++", {"max_gen_toks": spec.max_new_tokens}
        elif task == BITS_PER_BYTE:
            rows, template, metric = _text_rows(field_suite, lang, text[lang], rejects), "_bits_per_byte_yaml", "bits_per_byte"
        else:
            spec = classification[task]
            rows, chat, choices = _choice_rows(task, spec, lang, rejects), spec.chat, list(spec.choices.values())
            template, metric = (("_multiple_choice_yaml", "acc") if spec.scoring == "multiple_choice"
                                else ("_generate_yaml", "exact_match"))
            if metric == "exact_match":
                generation = {"max_gen_toks": spec.max_new_tokens}
        if not rows:
            raise UserError(f"held-out set {task}/{lang}: no usable records "
                            f"({len(rejects) - before} rejected; see {data_dir / 'rejects.jsonl'})")
        name = f"{TASK_PREFIX}{task}_{lang}"
        data = data_dir / f"{task}_{lang}.jsonl"
        _write_jsonl(data, rows)
        _task_yaml(tasks_dir, template, name, data, generation)
        written.append(TaskSet(task, lang, name, data, len(rows), metric,
                               Counter(r["reason"] for r in rejects[before:]), chat, choices, target,
                               field_suite.country if target else None))
    _write_jsonl(data_dir / "rejects.jsonl", rejects)
    if not written:
        raise UserError(f"no held-out set left for tasks {chosen} and languages {languages}")
    return written
