"""MinHash signature speed: data_prep.minhash against datasketch, as a Markdown table.

Documents of ~100 words are built from shuffled sentences of the NusaParagraph files in
../shared/data/nusa-writes. Every row hashes the same shingles (data_prep.minhash.shingles,
5-word, 112 permutations) and its time includes shingling. datasketch is not a dependency of
the project; install it outside the venv and point --datasketch at it (rows skipped if absent):

    .venv/bin/python -m pip install --no-deps --target /tmp/dsk datasketch
    .venv/bin/python bench/minhash.py [--docs 20000] [--repeat 3] [--datasketch /tmp/dsk]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

from data_prep.minhash import MinHasher, MinHashParams, shingles

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def build_documents(folder: Path, count: int, words_per_doc: int, seed: int) -> list[str]:
    """`count` documents of at least `words_per_doc` words, from randomly drawn sentences."""
    sentences = []
    for path in sorted(folder.glob("paragraph-*-valid.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                sentences.extend(s for s in _SENTENCE_END.split(row["text"]) if s.strip())
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        picked: list[str] = []
        while sum(len(s.split()) for s in picked) < words_per_doc:
            picked.append(rng.choice(sentences))
        docs.append(" ".join(picked))
    return docs


def datasketch_rows(num_perm: int, ngram_size: int) -> list[tuple[str, Callable[[list[str]], object]]]:
    from datasketch import LeanMinHash, MinHash

    def encoded(docs: list[str]) -> list[list[bytes]]:
        return [[s.encode() for s in shingles(d, ngram_size)] for d in docs]

    def per_shingle(docs: list[str]) -> object:
        out = []
        for doc in encoded(docs):
            m = MinHash(num_perm=num_perm)
            for s in doc:
                m.update(s)
            out.append(m)
        return out

    def per_document(docs: list[str]) -> object:
        out = []
        for doc in encoded(docs):
            m = MinHash(num_perm=num_perm)
            m.update_batch(doc)
            out.append(m)
        return out

    def bulk(docs: list[str], **kwargs) -> object:
        return [LeanMinHash(m) for m in MinHash.bulk(encoded(docs), num_perm=num_perm, **kwargs)]

    def xxh32(b: bytes) -> int:
        return xxhash.xxh32_intdigest(b)

    return [("datasketch MinHash.update, one call per shingle", per_shingle),
            ("datasketch MinHash.update_batch, per document", per_document),
            ("datasketch MinHash.bulk + LeanMinHash (sha1)", bulk),
            ("datasketch MinHash.bulk + LeanMinHash (xxh32)", lambda docs: bulk(docs, hashfunc=xxh32))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per row")
    parser.add_argument("--datasketch", type=Path, default=Path("/tmp/dsk"),
                        help="folder where datasketch was installed with pip --target")
    args = parser.parse_args()

    folder = args.data / "nusa-writes"
    if not folder.is_dir():
        sys.exit(f"skipped: no NusaParagraph text at {folder} (the shared/ folder beside the checkout)")
    docs = build_documents(folder, args.docs, args.words, seed=0)
    params = MinHashParams()
    hasher = MinHasher(params)
    rows: list[tuple[str, Callable[[list[str]], object]]] = [
        ("data_prep.minhash MinHasher.signatures (batch)", hasher.signatures),
        ("data_prep.minhash MinHasher.signature, per document", lambda ds: [hasher.signature(d) for d in ds]),
        ("shingling alone (shared by every row)", lambda ds: [shingles(d, params.ngram_size) for d in ds]),
    ]
    if args.datasketch.is_dir():
        sys.path.insert(0, str(args.datasketch))
    try:
        rows += datasketch_rows(params.num_perm, params.ngram_size)
    except ImportError:
        print(f"datasketch rows skipped: not importable from {args.datasketch} or the venv", file=sys.stderr)

    mean_words = sum(len(d.split()) for d in docs) / len(docs)
    print(f"{len(docs)} documents, {mean_words:.0f} words each on average, "
          f"{params.num_perm} permutations, {params.ngram_size}-word shingles, one process, "
          f"best of {args.repeat}\n")
    # Rows take turns within each round, so load from other processes falls on all of them alike.
    best = [float("inf")] * len(rows)
    for _ in range(args.repeat):
        for i, (_, run) in enumerate(rows):
            start = time.perf_counter()
            run(docs)
            best[i] = min(best[i], time.perf_counter() - start)
    print("| implementation | docs/s |\n|---|---:|")
    for (name, _), seconds in zip(rows, best, strict=True):
        print(f"| {name} | {len(docs) / seconds:,.0f} |")


if __name__ == "__main__":
    main()
