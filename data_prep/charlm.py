"""A language's character model: how plausible a text's letter sequences are in that language.

Word rules (Gopher's) judge words, and a script that spaces its words has no dictionary here
to test its words against: Arabic with its characters scrambled keeps Arabic letters, spaces
and a believable mean word length, and passes them. What it does not keep is the language's
letter sequences. CCNet (Wenzek et al. 2020) filters by a language model's perplexity; this is
that idea at its smallest: an interpolated character trigram model (Jelinek-Mercer: trigram,
bigram and unigram estimates mixed 0.6 / 0.3 / 0.1, with add-one unigrams), trained on a
country's own clean text with `countrytune charlm train`, stored as hashed counts, scored as
bits per character. The quality rule `max_char_bits` uses it where a language names one
(`char_model` in the profile).

Text is modelled case-folded, with digits as `0` and white space as one space: numbers and
layout say nothing about the language.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from countrytune.errors import UserError

BITS = 20  # 2**20 buckets per order: collisions stay rare for the ~10^5 trigrams of a language
LAMBDAS = (0.6, 0.3, 0.1)  # trigram, bigram, unigram weights
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s+")
_P1, _P2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
BOUNDARY = 0x2  # code point standing for "before the text"


def _modelled(text: str) -> str:
    return _SPACE.sub(" ", _DIGIT.sub("0", text.casefold())).strip()


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(f"\x02\x02{text}".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def _hash(*parts: np.ndarray) -> np.ndarray:
    h = np.zeros_like(parts[0])
    for p in parts:
        h = (h * _P1 + p + np.uint64(1)) * _P2
        h ^= h >> np.uint64(29)
    return (h & np.uint64((1 << BITS) - 1)).astype(np.int64)


def _grams(codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Buckets of (c), (b c), (a b c) and of the contexts (b), (a b), for each scored char."""
    a, b, c = codes[:-2], codes[1:-1], codes[2:]
    return _hash(c), _hash(b, c), _hash(a, b, c), _hash(b), _hash(a, b)


@dataclass
class CharModel:
    """Hashed counts of one language's character n-grams."""

    uni: np.ndarray
    bi: np.ndarray
    tri: np.ndarray
    ctx1: np.ndarray
    ctx2: np.ndarray
    total: int
    meta: dict = field(default_factory=dict)

    @classmethod
    def train(cls, texts: list[str], meta: dict | None = None) -> CharModel:
        arrays = [np.zeros(1 << BITS, dtype=np.uint32) for _ in range(5)]
        total = 0
        for text in texts:
            codes = _codes(_modelled(text))
            if len(codes) < 3:
                continue
            for array, buckets in zip(arrays, _grams(codes)):
                np.add.at(array, buckets, 1)
            total += len(codes) - 2
        if not total:
            raise UserError("no text to train a character model on")
        return cls(*arrays, total=total, meta=meta or {})

    def bits_per_char(self, text: str, only=None) -> float:
        """Mean -log2 P(char | two before) over the text's characters, or over those the
        compiled pattern `only` matches (the language's own letters: a brand name in Latin
        letters inside Arabic text is no sign of scrambling); 0.0 when none are scored."""
        modelled = _modelled(text)
        codes = _codes(modelled)
        if len(codes) < 3:
            return 0.0
        scored = None
        if only is not None:
            scored = np.zeros(len(modelled), dtype=bool)
            scored[[m.start() for m in only.finditer(modelled)]] = True
            if not scored.any():
                return 0.0
        g1, g2, g3, c1, c2 = _grams(codes)
        p1 = (self.uni[g1] + 1.0) / (self.total + (1 << 16))  # add-one over a generous alphabet
        with np.errstate(divide="ignore", invalid="ignore"):
            p2 = np.where(self.ctx1[c1] > 0, self.bi[g2] / np.maximum(self.ctx1[c1], 1), 0.0)
            p3 = np.where(self.ctx2[c2] > 0, self.tri[g3] / np.maximum(self.ctx2[c2], 1), 0.0)
        bits = -np.log2(LAMBDAS[0] * p3 + LAMBDAS[1] * p2 + LAMBDAS[2] * p1)
        return float(bits[scored].mean() if scored is not None else bits.mean())

    def save(self, path: Path) -> None:
        import json

        np.savez_compressed(path, uni=self.uni, bi=self.bi, tri=self.tri, ctx1=self.ctx1, ctx2=self.ctx2,
                            total=np.int64(self.total), meta=np.array(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: Path) -> CharModel:
        import json

        try:
            with np.load(path) as f:
                return cls(f["uni"], f["bi"], f["tri"], f["ctx1"], f["ctx2"], int(f["total"]),
                           json.loads(str(f["meta"])))
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"{path}: not a countrytune character model ({e}); train one with "
                            f"`countrytune charlm train`") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("charlm", help="train a language's character model (the quality rule max_char_bits)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser("train", help="count a language's character n-grams in clean text")
    t.add_argument("--language", required=True, help="ISO 639-3 code, e.g. arb")
    t.add_argument("--input", action="append", required=True, help="clean text files (any prep input format)")
    t.add_argument("--output", type=Path, required=True, help="the model file (.npz)")
    t.add_argument("--source", action="append", default=[], help="where the text comes from and its licence")
    t.add_argument("--eval", action="append", default=[], help="held-out files: bits per character printed")
    t.set_defaults(run=_run_train)


def _read(files: list[str], language: str) -> list[str]:
    from countrytune.records import ReaderConfig
    from data_prep.langid_train import read_labelled

    return read_labelled({language: files}, ReaderConfig())[0]


def _run_train(args: argparse.Namespace) -> int:
    texts = _read(args.input, args.language)
    model = CharModel.train(texts, {"language": args.language, "sources": args.source, "docs": len(texts),
                                    "trained": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.output)
    print(f"{args.output}: {args.language}, {len(texts):,} documents, {model.total:,} characters")
    if args.eval:
        held = _read(args.eval, args.language)
        bits = sorted(model.bits_per_char(t) for t in held)
        print(f"held-out bits per character: median {bits[len(bits) // 2]:.2f}, "
              f"99th percentile {bits[int(len(bits) * 0.99)]:.2f}, max {bits[-1]:.2f} ({len(held)} documents)")
    return 0
