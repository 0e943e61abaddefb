"""`countrytune langid train|eval`: train a country's language-ID model, report its accuracy."""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from countrytune.errors import UserError
from countrytune.profiles import load_profile
from countrytune.schema import Schema, read_yaml, validate
from data_prep.config import ReaderConfig

if TYPE_CHECKING:
    from data_prep.langid_model import LangIdModel


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
    texts, labels = read_labelled(cfg.train, cfg.reader)
    meta = {"country": cfg.country, "trained": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "train_docs": dict(sorted(Counter(labels).items())), "sources": cfg.sources}
    model = LangIdModel.train(texts, labels, FeatureSpec(ngram_max=cfg.ngram_max, bits=cfg.bits),
                              alpha=cfg.alpha, meta=meta)
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
