"""Scoring a model in memory with lm-evaluation-harness, keeping every document's score.

The model object is handed to lm-eval as it is (a plain transformers model, or a peft model
with its adapter on or off), so base and adapter are scored by the same code on the same
documents without loading anything twice, and the trainer can score the model it holds.
Per-document scores are kept so the base-vs-adapter difference gets a paired standard error.
lm-eval runs offline: its datasets are the JSONL files `suite.materialise` wrote.
"""

from __future__ import annotations

import math
import os
import re
import string
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from countrytune import library_output
from countrytune.errors import UserError
from pipeline.scoring.suite import TaskSet


@dataclass
class DocScores:
    """One task set's per-document scores for one model."""

    metric: str
    ids: list[str]
    """Each document's id (file:record), in the order scored."""
    values: list[float]
    """bits_per_byte: each document's log-likelihood in nats; acc and exact_match: 1.0 if
    right, else 0.0."""
    weights: list[int] | None = None
    """bits_per_byte: each document's UTF-8 bytes."""
    predictions: list[int] | None = None
    """acc, exact_match: the index of the answer the model chose (-1: it wrote none of them)."""
    gold: list[int] | None = None
    classes: int | None = None
    """acc, exact_match: how many answers there were to choose from."""
    outputs: list[str] | None = None
    """exact_match, chrf++: what the model wrote."""
    stats: list[list[int]] | None = None
    """chrf++: each document's n-gram statistics (sacrebleu's); `values` holds its
    sentence-level chrF++, the set's value is the corpus chrF++ of the summed statistics."""
    target: str | None = None
    """chrf++: the language asked for."""
    languages: list[str] | None = None
    """chrf++: the language of each answer, by the country's language identifier."""

    def value(self) -> float:
        if self.metric == "bits_per_byte":
            return -sum(self.values) / sum(self.weights) / math.log(2)
        if self.metric == "chrf++":
            import numpy as np

            from pipeline.scoring.generative import corpus_chrf

            return float(corpus_chrf(np.asarray(self.stats, dtype=np.float64)))
        return sum(self.values) / len(self.values)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@contextmanager
def _offline():
    """lm-eval reads local JSONL only; make sure nothing tries the hub while it runs (datasets
    reads these variables at import, so an already imported module is told directly)."""
    import datasets.config

    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved_env = {n: os.environ.get(n) for n in names}
    saved_cfg = {n: getattr(datasets.config, n) for n in names}
    os.environ.update({n: "1" for n in names})
    for n in names:
        setattr(datasets.config, n, True)
    try:
        yield
    finally:
        for n, v in saved_env.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
        for n, v in saved_cfg.items():
            setattr(datasets.config, n, v)


def _quiet_lm(model, tokenizer, batch_size: int, max_length: int | None):
    import logging

    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        # lm-eval opens a progress bar per batch of rolling windows; we report per task.
        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

        def loglikelihood(self, requests, disable_tqdm=False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm=False):
            return super().generate_until(requests, disable_tqdm=True)

    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # lm-eval re-ties the input and output embeddings of the model it is given. Ours is loaded
    # and tied already, and re-tying fails on a tied head that peft wraps to train new-token
    # rows (transformers sets `weight` on peft's wrapper): skip it for this call only.
    model.tie_weights = lambda *args, **kwargs: None
    try:
        return QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    finally:
        del model.tie_weights


def score_model(model, tokenizer, task_sets: list[TaskSet], tasks_dir: Path, *, batch_size: int = 8,
                max_length: int | None = None, label: str = "model",
                log: Callable[[str], None] = print) -> dict[str, DocScores]:
    """Score `model` on every task set; returns lm-eval task name -> per-document scores."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    lm = _quiet_lm(model, tokenizer, batch_size, max_length)
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    was_training = model.training
    model.eval()
    out: dict[str, DocScores] = {}
    judges: dict[str, object] = {}
    try:
        for ts in task_sets:
            started = time.monotonic()
            if ts.chat and not getattr(tokenizer, "chat_template", None):
                raise UserError(f"{ts.task} is asked through the model's chat template, and this "
                                f"tokenizer has none: score it on an instruction-tuned model, or set "
                                f"`chat: false` for it in the suite")
            library_output.route()  # lm-eval and datasets attach their handlers when imported
            with torch.no_grad(), _offline():
                result = lm_eval.simple_evaluate(model=lm, tasks=[ts.lm_eval_name], task_manager=manager,
                                                 bootstrap_iters=0, log_samples=True, verbosity="ERROR",
                                                 apply_chat_template=ts.chat)
            samples = sorted(result["samples"][ts.lm_eval_name], key=lambda s: s["doc_id"])
            if len(samples) != ts.docs:
                raise RuntimeError(f"lm-eval scored {len(samples)} of {ts.docs} documents of {ts.lm_eval_name}")
            out[ts.lm_eval_name] = _doc_scores(ts.metric, samples)
            if ts.metric == "chrf++":
                _judge_languages(out[ts.lm_eval_name], ts, judges)
            log(f"{label}: {ts.task} {ts.lang}: {ts.metric} {out[ts.lm_eval_name].value():.4f} "
                f"({ts.docs} docs, {time.monotonic() - started:.0f} s)")
    finally:
        model.train(was_training)
    return out


def _judge_languages(scores: DocScores, ts: TaskSet, judges: dict) -> None:
    """Which language each answer is in, by the country's language identifier (loaded once)."""
    from pipeline.scoring.generative import LanguageJudge

    if ts.country not in judges:
        judges[ts.country] = LanguageJudge(ts.country)
    scores.target, scores.languages = ts.target, judges[ts.country].languages(scores.outputs)


def _doc_scores(metric: str, samples: list[dict]) -> DocScores:
    ids = [str(s["doc"]["id"]) for s in samples]
    if metric == "chrf++":
        from pipeline.scoring.generative import chrf_documents

        outputs = [str(s["filtered_resps"][0]).strip() for s in samples]
        values, stats = chrf_documents(outputs, [s["doc"]["reference"] for s in samples])
        return DocScores(metric, ids, values, outputs=outputs, stats=stats)
    if metric == "bits_per_byte":
        pairs = [s["bits_per_byte"] for s in samples]  # (log-likelihood, bytes) per document
        return DocScores(metric, ids, [float(ll) for ll, _ in pairs], weights=[int(b) for _, b in pairs])
    gold = [int(s["doc"]["gold"]) for s in samples]
    classes = len(samples[0]["doc"]["choices"])
    if metric == "exact_match":
        outputs = [str(s["filtered_resps"][0]) for s in samples]
        predictions = [answer_index(out, s["doc"]["choices"]) for out, s in zip(outputs, samples)]
        for p, g, s in zip(predictions, gold, samples):  # our reading must agree with lm-eval's metric
            if (p == g) != bool(s["exact_match"]):
                raise RuntimeError(f"answer {s['filtered_resps'][0]!r} to {s['doc']['id']}: lm-eval's "
                                   f"exact_match {s['exact_match']} but matched choice {p} (gold {g})")
        return DocScores(metric, ids, [float(s["exact_match"]) for s in samples], predictions=predictions,
                         gold=gold, classes=classes, outputs=outputs)
    predictions = []
    for s in samples:
        logliks = [float(r[0]) for r in s["filtered_resps"]]
        predictions.append(max(range(len(logliks)), key=logliks.__getitem__))
    return DocScores(metric, ids, [float(s["acc"]) for s in samples], predictions=predictions, gold=gold,
                     classes=classes)


_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _normalise(text: str) -> str:
    """As lm-eval's exact_match with `_generate_yaml`'s options: spaces removed, lower case,
    ASCII punctuation removed (in that order, as lm-eval does)."""
    return re.sub(r"\s+", "", text).lower().translate(_ASCII_PUNCTUATION)


def answer_index(output: str, choices: list[str]) -> int:
    """Which answer word a written answer is (-1: none of them)."""
    wanted = _normalise(output)
    return next((i for i, c in enumerate(choices) if _normalise(c) == wanted), -1)
