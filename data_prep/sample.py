"""The embedded sample corpus: our own sentences composed into documents, with faults planted.

    python -m data_prep.sample [--out data_prep/sample_corpus/corpus]

Deterministic (seeded): the committed files under `sample_corpus/corpus/` are its output,
and a test checks they still are. `planted.json` records what was planted (duplicates,
personal data, mojibake, junk, malformed records) so tests can check the pipeline finds it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent / "sample_corpus"
DEFAULT_OUT = HERE / "corpus"
SEED = 20261128
DOCS_PER_LANGUAGE = 30
MAX_RECORD_BYTES = 20_000  # the sample recipe's reader limit; one planted line exceeds it

# Personal data that the Indonesian profile must find: values valid by structure
# (NIK province/date/serial, Luhn for the card), in sentences of their own.
PII_SNIPPETS = [
    ("NIK", "Data pelamar atas nama Siti dengan NIK 3174055208900003 sudah kami terima dan sedang diperiksa panitia."),
    ("NIK", "Menurut KTP, nomor NIK saya 3273 0112 0885 0002 dan alamatnya di Bandung."),
    ("PHONE", "Kalau ada pertanyaan soal pendaftaran silakan hubungi panitia di 0812-3456-7890 setiap hari kerja."),
    ("PHONE", "Nomer WA kula +62 857 1234 5678, monggo ditelpon yen arep pesen kopi."),
    ("PHONE", "Kantor kelurahan bisa dihubungi lewat telepon (021) 555-1234 pada jam kerja."),
    ("EMAIL", "Kirimkan naskah cerita pendek kalian ke redaksi.warta@contoh-desa.id sebelum akhir bulan."),
    ("NPWP", "Untuk faktur pajak, NPWP usaha kami adalah 01.234.567.8-901.234 dan alamatnya di Semarang."),
    ("CARD", "Pembayaran tiket memakai kartu 4111 1111 1111 1111 ternyata ditolak oleh sistem bank."),
    ("IP", "Server koperasi desa berjalan di alamat 192.168.10.25 dan hanya bisa diakses dari kantor."),
]
# Numbers that are not personal data and must survive redaction.
KEEP_NUMBERS = [
    "Harga beras premium di pasar sekarang Rp 14.500 per kilogram, naik dari Rp 13.900 bulan lalu.",
    "Proklamasi kemerdekaan dibacakan pada 17-08-1945 di Jakarta dan diperingati setiap tahun.",
    "Kantor pos pusat kota berada di kode pos 40115 dan buka mulai pukul 08.30 setiap hari.",
    "Buku sejarah desa itu bernomor ISBN 978-602-03-1234-5 dan dicetak sebanyak 1.500 eksemplar.",
    "Aplikasi koperasi versi 3.10.2 dirilis tahun 2023 untuk 2.750 anggota di 12 desa.",
]
JUNK = [
    "### $$$ ### !!! ### $$$ ### !!! ### $$$ ### !!! ### $$$ ###",
    "klik disini\nklik disini\nklik disini\nklik disini\nklik disini\nklik disini",
    "ok",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "Baca selengkapnya...\nBerita terkini...\nPromo hari ini...\nDiskon besar...",
    "asdf qwer zxcv uiop hjkl " * 5,
    "beli murah beli murah beli murah beli murah beli murah beli murah beli murah beli murah "
    "beli murah beli murah beli murah beli murah beli murah beli murah beli murah beli murah "
    "beli murah beli murah beli murah beli murah beli murah beli murah beli murah beli murah",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
]


def mojibake(text: str) -> str:
    """What a UTF-8 text looks like after a cp1252 round trip, the commonest web corruption."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


def build(out: Path = DEFAULT_OUT) -> dict:
    rng = random.Random(SEED)
    bank: dict[str, list[str]] = yaml.safe_load((HERE / "sentences.yaml").read_text(encoding="utf-8"))
    clean: list[dict] = []
    for lang, sentences in bank.items():
        for i in range(DOCS_PER_LANGUAGE):
            chosen = rng.sample(sentences, rng.randint(3, 5))
            clean.append({"id": f"{lang}-{i:03d}", "lang": lang, "text": " ".join(chosen)})
    rng.shuffle(clean)
    planted: Counter[str] = Counter()
    docs = list(clean)

    # Exact duplicates: verbatim, and with case and spacing changed (still the same text).
    for i, orig in enumerate(rng.sample(clean, 12)):
        text = orig["text"] if i % 2 else "  " + orig["text"].upper().replace(" ", "  ")
        docs.append({"id": f"dup-{i:02d}", "lang": orig["lang"], "text": text})
        planted["exact_duplicates"] += 1
    # Near duplicates, last word changed (word 5-gram Jaccard ~0.93 on these ~30-word
    # documents): exact dedup keeps them, near dedup must not.
    for i, orig in enumerate(rng.sample(clean, 8)):
        words = orig["text"].split()
        words[-1] = words[-1].upper() + "nya"
        docs.append({"id": f"near-{i:02d}", "lang": orig["lang"], "text": " ".join(words)})
        planted["near_duplicates"] += 1
    for i, (kind, snippet) in enumerate(PII_SNIPPETS):
        base = rng.choice([d for d in clean if d["lang"] == "ind"])["text"]
        docs.append({"id": f"pii-{i:02d}", "lang": "ind", "text": f"{snippet} {base}"})
        planted[f"pii:{kind}"] += 1
    for i, text in enumerate(KEEP_NUMBERS):
        docs.append({"id": f"numbers-{i:02d}", "lang": "ind", "text": text})
    for i, orig in enumerate(d for d in clean if not d["text"].isascii()):
        if i == 8:
            break
        docs.append({"id": f"mojibake-{i:02d}", "lang": orig["lang"], "text": mojibake(orig["text"])})
        planted["mojibake"] += 1
    for i, text in enumerate(JUNK):
        docs.append({"id": f"junk-{i:02d}", "text": text})
        planted["junk"] += 1
    rng.shuffle(docs)

    # Spread over five files of four formats; lang present in some, absent in others.
    out.mkdir(parents=True, exist_ok=True)
    parts = [docs[i::5] for i in range(5)]
    lines = [json.dumps(d, ensure_ascii=False).encode() for d in parts[0]]
    malformed = [
        b'{"id": "broken-json", "text": "kalimat yang tidak selesai',
        b'{"id": "bad-utf8", "text": "Sugeng enjing \xff\xfe sedaya"}',
        b'{"id": "no-text", "body": "Teks ini ada di kolom yang salah."}',
        b'{"id": "nul", "text": "Teks dengan\\u0000byte NUL di tengah."}',
        b'["sebuah", "daftar", "bukan", "objek"]',
        b'{"id": "number-text", "text": 12345}',
        b'{"id": "too-long", "text": "' + b"panjang " * (MAX_RECORD_BYTES // 8 + 10) + b'"}',
    ]
    for i, bad in enumerate(malformed):
        lines.insert(7 * (i + 1), bad)
    planted["malformed"] = len(malformed)
    (out / "web-news.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.GzipFile(out / "forum.jsonl.gz", "wb", mtime=0) as f:
        f.write("".join(json.dumps({"text": d["text"], "lang": d.get("lang")}, ensure_ascii=False)
                        + "\n" for d in parts[1]).encode())
    with open(out / "reviews.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "lang", "text"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({"id": d["id"], "lang": d.get("lang", ""), "text": d["text"]} for d in parts[2])
    # Plain text holds one document per line and no language field: it gets the one-line
    # documents in the profile's main language (and unlabelled junk); the rest go to Parquet.
    fits_text = lambda d: "\n" not in d["text"] and d.get("lang", "ind") == "ind"  # noqa: E731
    text_docs = [d for d in parts[3] if fits_text(d)]
    parts[4] += [d for d in parts[3] if not fits_text(d)]
    (out / "stories.txt").write_text("".join(d["text"] + "\n" for d in text_docs), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"id": d["id"], "lang": d.get("lang"), "text": d["text"]}
                                         for d in parts[4]]), out / "archive.parquet")
    facts = {"documents": len(docs), "records": len(docs) + len(malformed), **dict(sorted(planted.items()))}
    (out.parent / "planted.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the sample corpus.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    print(json.dumps(build(parser.parse_args().out), indent=2))


if __name__ == "__main__":
    main()
