"""`countrytune langid train|eval`: train a country's language-ID model, report its accuracy."""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from countrytune.errors import UserError
from countrytune.profiles import load_profile
from countrytune.schema import Schema, read_yaml, validate
from data_prep.config import ReaderConfig

if TYPE_CHECKING:
    from data_prep.langid_model import FeatureSpec, LangIdModel


class LabelCheck(Schema):
    """A cross-validated check of the labels of some training files, segment by segment."""

    files: list[str]
    """Training files (as written under `train`) whose labels are checked."""
    into: list[str]
    """Languages a segment may be moved into: the language writers fall back to."""
    segment_chars: int = Field(default=200, gt=0)
    """Segment length, as prep's langid stage cuts documents (the profile's segment_chars)."""
    folds: int = Field(default=5, ge=2)
    """Each segment is judged by a model trained on the other folds' documents."""


class LangIdTrainConfig(Schema):
    """Training of one country's language-ID model."""

    country: str
    """Country profile; every label must be one of its languages."""
    output: str
    """Where the model (.npz) goes; `data_prep/models/langid-<country>.npz` ships with the project."""
    train: dict[str, list[str]]
    """ISO 639-3 code -> files of text in that language (any prep input format)."""
    eval: dict[str, list[str]] = {}
    """Held-out files per language, for the precision / recall / F1 report."""
    reader: ReaderConfig = ReaderConfig()
    """How the files are read (text field, format)."""
    ngram_max: int = Field(default=4, ge=1, le=6)
    """Longest character n-gram; 4 measured best on NusaX (5: -0.3 macro-F1 points)."""
    bits: int = Field(default=16, ge=10, le=22)
    """2**bits feature buckets; 16 measured as good as 18 at a quarter of the size."""
    alpha: float = Field(default=0.1, gt=0)
    """Naive Bayes smoothing; 0.1 measured above 0.01 on NusaX."""
    sources: list[str] = []
    """Where the training text comes from and its licence, kept in the model's metadata."""
    label_check: LabelCheck | None = None
    """Move segments of these files that a held-out model puts in an `into` language there."""


def read_labelled(files: dict[str, list[str]], reader: ReaderConfig) -> tuple[list[str], list[str]]:
    from data_prep.readers import DocumentReader, expand_inputs
    from data_prep.step import ShardContext

    texts, labels = [], []
    for lang, specs in sorted(files.items()):
        for path in expand_inputs(specs):
            rejects: list = []
            docs = list(DocumentReader(reader, lang).read(path, ShardContext(rejects.append)))
            if not docs:
                raise UserError(f"{path}: no text read for {lang} ({len(rejects)} records rejected)")
            texts += [doc.text for doc in docs]
            labels += [lang] * len(docs)
    return texts, labels


def check_labels(texts: list[str], labels: list[str], checked: list[bool], check: LabelCheck,
                 spec: FeatureSpec, alpha: float) -> tuple[list[str], list[str], Counter]:
    """Texts of checked files cut into segments, with each segment's label corrected where a
    model trained without its document calls it one of `check.into`; the moves, counted.

    One pass, not repeated: on NusaParagraph a second pass moved 67 more Betawi paragraphs
    to Indonesian, nearly all with Betawi words (kagak, nye, entu), so the corrected labels
    started to feed their own errors; the first pass moved segments with none."""
    from countrytune.langid import segments
    from countrytune.langid_model import LangIdModel

    pieces, piece_labels, piece_checked, doc_of = [], [], [], []
    for doc, (text, lang, is_checked) in enumerate(zip(texts, labels, checked)):
        cut = segments(text, check.segment_chars, len(text)) if is_checked else [text]
        pieces += cut
        piece_labels += [lang] * len(cut)
        piece_checked += [is_checked] * len(cut)
        doc_of += [doc] * len(cut)
    fold = np.array(doc_of) % check.folds  # a document's segments share a fold
    corrected, moved = list(piece_labels), Counter()
    for k in range(check.folds):
        train_rows = np.flatnonzero(fold != k)
        judged = [i for i in np.flatnonzero(fold == k) if piece_checked[i]]
        model = LangIdModel.train([pieces[i] for i in train_rows], [piece_labels[i] for i in train_rows],
                                  spec, alpha=alpha)
        for i, (lang, _) in zip(judged, model.predict([pieces[i] for i in judged])):
            if lang != piece_labels[i] and lang in check.into:
                corrected[i] = lang
                moved[f"{piece_labels[i]}->{lang}"] += 1
    return pieces, corrected, moved


def evaluate(model: LangIdModel, texts: list[str], labels: list[str]) -> dict:
    """Per-language precision, recall and F1, their macro average, and the worst confusions."""
    predicted = [lang for lang, _ in model.predict(texts)]
    per_lang = {}
    for lang in sorted(set(labels)):
        tp = sum(p == lang == y for p, y in zip(predicted, labels))
        fp = sum(p == lang != y for p, y in zip(predicted, labels))
        fn = sum(y == lang != p for p, y in zip(predicted, labels))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_lang[lang] = {"precision": round(precision, 4), "recall": round(recall, 4),
                          "f1": round(f1, 4), "support": tp + fn}
    confusions = Counter(f"{y}->{p}" for p, y in zip(predicted, labels) if p != y)
    return {"per_language": per_lang,
            "macro_f1": round(sum(v["f1"] for v in per_lang.values()) / len(per_lang), 4),
            "accuracy": round(sum(p == y for p, y in zip(predicted, labels)) / len(labels), 4),
            "confusions": dict(confusions.most_common(10))}


def report(metrics: dict) -> str:
    lines = ["| language | precision | recall | F1 | docs |", "|---|---|---|---|---|"]
    lines += [f"| {lang} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
              for lang, m in metrics["per_language"].items()]
    lines.append(f"| **macro** | | | **{metrics['macro_f1']:.3f}** | |")
    confused = ", ".join(f"{k} {v}" for k, v in metrics["confusions"].items()) or "none"
    return "\n".join(lines) + f"\n\naccuracy {metrics['accuracy']:.3f}; confusions (true->predicted): {confused}"


def train(cfg: LangIdTrainConfig) -> tuple[LangIdModel, dict | None]:
    from data_prep.langid_model import FeatureSpec, LangIdModel

    profile = load_profile(cfg.country)
    unknown = sorted(lang for lang in cfg.train if profile.language(lang) is None)
    if unknown:
        raise UserError(f"labels {unknown} are not languages of the {profile.name} profile")
    texts, labels, checked = [], [], []  # file by file, to know which texts label_check judges
    checked_files = set(cfg.label_check.files) if cfg.label_check else set()
    for lang, files in sorted(cfg.train.items()):
        for file in files:
            file_texts, _ = read_labelled({lang: [file]}, cfg.reader)
            texts += file_texts
            labels += [lang] * len(file_texts)
            checked += [file in checked_files] * len(file_texts)
    meta = {"country": cfg.country, "trained": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "train_docs": dict(sorted(Counter(labels).items())), "sources": cfg.sources}
    spec = FeatureSpec(ngram_max=cfg.ngram_max, bits=cfg.bits)
    if cfg.label_check:
        check = cfg.label_check
        listed = {f for files in cfg.train.values() for f in files}
        if set(check.files) - listed or set(check.into) - set(cfg.train):
            raise UserError(f"label_check: files {sorted(set(check.files) - listed)} are not under `train`, "
                            f"or languages {sorted(set(check.into) - set(cfg.train))} are not trained")
        texts, labels, moved = check_labels(texts, labels, checked, check, spec, cfg.alpha)
        meta["label_check"] = {"segments": len(texts), "moved": dict(sorted(moved.items()))}
    model = LangIdModel.train(texts, labels, spec, alpha=cfg.alpha, meta=meta)
    metrics = None
    if cfg.eval:
        metrics = evaluate(model, *read_labelled(cfg.eval, cfg.reader))
        model.meta["eval"] = metrics
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return model, metrics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("langid", help="train or evaluate a country's language-ID model",
                       description="Train a compact character n-gram model on labelled text of a "
                                   "country's languages; the prep `langid` stage uses it.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser("train", help="train from a recipe (recipes/<cc>/langid.yaml)")
    t.add_argument("--config", type=Path, required=True, help="a LangIdTrainConfig YAML")
    t.add_argument("--output", help="model path (overrides the recipe)")
    t.set_defaults(run=run_train)
    e = actions.add_parser("eval", help="report a model's accuracy on the recipe's eval files")
    e.add_argument("--config", type=Path, required=True)
    e.add_argument("--model", type=Path, help="model to evaluate (default: the recipe's output)")
    e.set_defaults(run=run_eval)


def _config(args: argparse.Namespace) -> LangIdTrainConfig:
    data = read_yaml(args.config)
    if getattr(args, "output", None):
        data["output"] = args.output
    return validate(LangIdTrainConfig, data, str(args.config))


def run_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    model, metrics = train(cfg)
    print(f"trained {cfg.output}: {sum(model.meta['train_docs'].values()):,} documents, "
          f"languages {', '.join(model.labels)}")
    if metrics:
        print(report(metrics))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if not cfg.eval:
        raise UserError(f"{args.config} has no eval files")
    from data_prep.langid_model import LangIdModel

    model = LangIdModel.load(args.model or Path(cfg.output))
    print(report(evaluate(model, *read_labelled(cfg.eval, cfg.reader))))
    return 0
