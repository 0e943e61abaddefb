"""The corpus and tokenizer bench/gpu.sh trains on, made here (CPU) and carried to the device.

    .venv/bin/python bench/gpu_data.py            # writes bench-out/gpu/{corpus.jsonl,tokenizer/}

Real human-written text from ../shared/data (which the device does not have), shaped like
what users train on: short texts (NusaX reviews in 12 languages, PUD news sentences in Thai,
Arabic and English) and long web-page-like documents (consecutive NusaParagraph paragraphs of
one language joined into pages of 2-20 KB, log-uniform). Packed rows then hold many short
documents or a few long ones, which is what attention over packed rows has to deal with. The
tokenizer is a 32,000-token byte-level BPE trained on it (the 8B shape's 128,256 embedding rows
are more than it uses; their size still weighs on the output head and the loss).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
NUSAX = {"acehnese": "ace", "balinese": "ban", "banjarese": "bjn", "buginese": "bug", "english": "eng",
         "indonesian": "ind", "javanese": "jav", "madurese": "mad", "minangkabau": "min", "ngaju": "nij",
         "sundanese": "sun", "toba_batak": "bbc"}


def rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def documents(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for folder, lang in NUSAX.items():
        for split in ("train", "valid"):
            for r in rows(SHARED / "nusax" / "sentiment" / folder / f"{split}.csv"):
                docs.append({"id": f"nusax-{lang}-{split}-{r['id']}", "text": r["text"], "lang": lang})
    for lang in ("tha", "arb", "eng"):
        for r in rows(SHARED / "pud" / f"{lang}-dev.csv"):
            docs.append({"id": f"pud-{lang}-{r['id']}", "text": r["text"], "lang": lang})
    for path in sorted((SHARED / "nusa-writes").glob("paragraph-*-valid.csv")):
        lang = path.stem.split("-")[1]
        paragraphs = [r["text"] for r in rows(path)]
        page, target, n = [], 0, 0
        for p in paragraphs:
            if not page:
                target = int(math.exp(rng.uniform(math.log(2_000), math.log(20_000))))
            page.append(p)
            if sum(len(x) for x in page) >= target:
                docs.append({"id": f"page-{lang}-{n}", "text": "\n\n".join(page), "lang": lang})
                page, n = [], n + 1
        if page:
            docs.append({"id": f"page-{lang}-{n}", "text": "\n\n".join(page), "lang": lang})
    rng.shuffle(docs)
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "gpu")
    parser.add_argument("--vocab", type=int, default=32_000)
    args = parser.parse_args()
    if not (SHARED / "nusax").is_dir():
        print(f"real text not found at {SHARED}", file=sys.stderr)
        return 2
    from pipeline.training.tokenizer import train_tokenizer

    docs = documents()
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    tok = train_tokenizer((d["text"] for d in docs), args.vocab, args.out / "tokenizer")
    pages = [d for d in docs if d["id"].startswith("page-")]
    chars = sum(len(d["text"]) for d in docs)
    tokens = sum(len(tok(d["text"])["input_ids"]) for d in docs)
    print(f"{len(docs):,} documents ({len(pages):,} pages of 2-20 KB, mean "
          f"{sum(len(d['text']) for d in pages) / len(pages):,.0f} characters; the rest short texts), "
          f"{chars / 1e6:.1f}M characters, {tokens / 1e6:.2f}M tokens with a {len(tok):,}-token BPE; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
