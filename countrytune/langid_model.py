"""A compact, country-trainable language-ID model: hashed character n-grams, naive Bayes.

Off-the-shelf offline models cannot tell Javanese or Sundanese from Indonesian (README:
language ID), so each country trains its own on labelled text of its languages.
Everything is numpy and batched: a batch of documents is one array of code points, the
n-gram hashes of every document are computed together, and per-document scores are one
gather and one segmented sum, which is what makes it fast on CPU without a native library.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_NOT_LETTER = re.compile(r"[^\w']+|[\d_]+")
_LETTER = re.compile(r"[^\W\d_]")
# Characters scored per numpy pass: ~260k n-grams, a 15 MB gather at 14 languages. On the
# segments of 1,024 long documents (2.65M characters) scoring took 2.0, 1.8 and 2.4 s in
# chunks of 16k, 64k and 256k characters, against 7-10 s in one pass (cache misses).
SCORE_CHUNK_CHARS = 65_536
# Odd multipliers for the polynomial rolling hash and per-n salts (any large odd constants do;
# these are the 64-bit golden-ratio and splitmix64 constants).
_BASE = np.uint64(0x9E3779B97F4A7C15)
_SALTS = [np.uint64(s) for s in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93,
                                 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3)]


def clean_for_langid(text: str) -> str:
    """Lower-case letters and apostrophes only: digits, punctuation and URLs say nothing
    about the language, and would only make two languages' n-grams look alike."""
    return " " + _NOT_LETTER.sub(" ", text.lower()).strip() + " "


@dataclass(frozen=True)
class FeatureSpec:
    ngram_min: int = 1
    ngram_max: int = 4
    """Longest character n-gram; on NusaX valid 4 measured 0.3 macro-F1 points above 5."""
    bits: int = 16
    """2**bits hash buckets; on NusaX valid 16 measured as good as 18 at a quarter of the size."""


def batch_features(texts: list[str], spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(bucket of every n-gram of every text, index of the first n-gram of each text).

    The texts are laid end to end with `ngram_max` zero code points between them; n-grams
    that touch a zero cross a boundary and are left out."""
    gap = "\0" * spec.ngram_max
    joined = gap.join(clean_for_langid(t) for t in texts) + gap
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    zero_before = np.concatenate([[0], np.cumsum(cps == 0)])
    starts_of_text = np.flatnonzero(np.r_[True, (cps[:-1] == 0) & (cps[1:] != 0)])
    buckets, owners = [], []
    marks = np.zeros(len(cps), dtype=np.int64)
    marks[starts_of_text] = 1
    text_of = np.cumsum(marks) - 1
    shift = np.uint64(64 - spec.bits)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        h = np.zeros(len(cps), dtype=np.uint64)
        for n in range(1, spec.ngram_max + 1):
            # h[i] = hash of cps[i:i+n], extended from the (n-1)-gram hash
            h = h[: len(cps) - n + 1] * _BASE + cps[n - 1:]
            if n < spec.ngram_min:
                continue
            valid = (zero_before[n:len(cps) + 1] - zero_before[: len(cps) - n + 1]) == 0
            idx = np.flatnonzero(valid)
            buckets.append(((h[idx] * _SALTS[n - 1]) >> shift).astype(np.int64))
            owners.append(text_of[idx])
    bucket = np.concatenate(buckets)
    owner = np.concatenate(owners)
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=len(texts))
    return bucket[order], np.concatenate([[0], np.cumsum(counts)[:-1]])


@dataclass
class LangIdModel:
    labels: list[str]
    log_prob: np.ndarray
    """(2**bits, n_labels) float32: log P(n-gram bucket | language), minus each bucket's mean
    over languages. The shift adds the same amount to every language's score, so posteriors
    are unchanged, but the sums stay small enough for float32 (see `scores`)."""
    spec: FeatureSpec = FeatureSpec()
    meta: dict = field(default_factory=dict)

    @classmethod
    def train(cls, texts: list[str], labels: list[str], spec: FeatureSpec = FeatureSpec(),
              alpha: float = 0.1, meta: dict | None = None) -> "LangIdModel":
        """Multinomial naive Bayes with Lidstone smoothing `alpha`; classes get equal priors,
        since how much labelled text a language has says nothing about how common it is."""
        names = sorted(set(labels))
        label_index = np.array([names.index(lab) for lab in labels])
        counts = np.zeros((2 ** spec.bits, len(names)), dtype=np.float64)
        for start in range(0, len(texts), 2000):
            bucket, first = batch_features(texts[start:start + 2000], spec)
            owner = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(bucket)]))
            np.add.at(counts, (bucket, label_index[start:start + 2000][owner]), 1.0)
        log_prob = np.log(counts + alpha) - np.log(counts.sum(axis=0) + alpha * counts.shape[0])
        log_prob -= log_prob.mean(axis=1, keepdims=True)
        return cls(labels=names, log_prob=log_prob.astype(np.float32), spec=spec, meta=meta or {})

    def __post_init__(self) -> None:
        # Languages as rows: gathering a row's buckets and summing along it is contiguous,
        # 3x faster than summing a (n-grams, languages) gather down its columns in float64.
        self._by_label = np.ascontiguousarray(self.log_prob.T, dtype=np.float32)

    def scores(self, texts: list[str]) -> np.ndarray:
        """(len(texts), n_labels) posterior probabilities.

        Texts are scored in chunks of about SCORE_CHUNK_CHARS characters: the gather below
        makes n_labels float32 values per n-gram, which for a batch of 256 long documents
        (5,000 characters each, 4 n-gram orders) was ~290 MB at once, the largest transient
        of a prep worker. Each text is summed on its own, so chunking changes no score."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        chunks, start, chars = [], 0, 0
        for i, text in enumerate(texts):
            chars += len(text)
            if chars >= SCORE_CHUNK_CHARS:
                chunks.append(self._chunk_scores(texts[start:i + 1]))
                start, chars = i + 1, 0
        if start < len(texts):
            chunks.append(self._chunk_scores(texts[start:]))
        return np.concatenate(chunks)

    def _chunk_scores(self, texts: list[str]) -> np.ndarray:
        bucket, first = batch_features(texts, self.spec)
        loglik = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        nonempty = np.diff(np.r_[first, len(bucket)]) > 0
        if len(bucket):
            loglik[nonempty] = np.add.reduceat(self._by_label[:, bucket], first[nonempty], axis=1).T
        loglik -= loglik.max(axis=1, keepdims=True)
        probs = np.exp(loglik)
        no_letters = np.array([not _LETTER.search(t) for t in texts])
        probs[no_letters] = 1.0  # no letters at all: no evidence for any language
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        probs = self.scores(texts)
        best = probs.argmax(axis=1)
        return [(self.labels[i], float(probs[row, i])) for row, i in enumerate(best)]

    def save(self, path: Path) -> None:
        """One .npz: float16 log-probabilities (2 bytes a weight; no measured change in
        predictions) and JSON metadata (labels, features, training data and its licence)."""
        meta = {"labels": self.labels, "spec": self.spec.__dict__, **self.meta}
        with open(path, "wb") as f:
            np.savez_compressed(f, log_prob=self.log_prob.astype(np.float16),
                                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path: Path) -> "LangIdModel":
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            log_prob = data["log_prob"].astype(np.float32)
        labels = meta.pop("labels")
        spec = FeatureSpec(**meta.pop("spec"))
        return cls(labels=labels, log_prob=log_prob, spec=spec, meta=meta)
