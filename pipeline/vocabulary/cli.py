"""`countrytune tokenizer`: how well tokenizers read a country's languages, and extending a
base's vocabulary for them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from countrytune.words import Segmenter

EXAMPLE = """examples:
  countrytune tokenizer report --country id --tokenizer models/smollm2-135m --tokenizer llama3 --tokenizer tekken
  countrytune tokenizer extend --base models/smollm2-135m --corpus out/prep-nusa-regional \\
      --add 8000 --to models/smollm2-135m-id
  countrytune tokenizer report --country th --tokenizer models/smollm2-135m --tokenizer llama3

Packaged tokenizers (read offline from installed packages; pip install --no-deps llama-models
mistral-common): llama3, mistral-v1, mistral-v3, tekken. Held-out text per language comes from
the country's suite (recipes/<country>/heldout.yaml, or --suite); its words from the country
profile's `word_segmenter` per language (Thai: PyThaiNLP's dictionary words, not spaces).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="tokenizer fertility per language; vocabulary extension",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="tokenizer_action", metavar="ACTION", required=True)
    r = actions.add_parser("report", help="tokens per word, bytes per token, words split in 3+ pieces",
                           epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--tokenizer", action="append", required=True,
                   help="a model/tokenizer directory or a packaged name; repeatable")
    e = actions.add_parser("extend", help="add tokens learnt on the country's clean text to a base",
                           epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--base", type=Path, required=True, help="base model directory (tokenizer.json, safetensors)")
    e.add_argument("--corpus", type=Path, action="append", required=True,
                   help="a `countrytune prep` output; repeatable")
    e.add_argument("--add", type=int, required=True, help="how many tokens to add")
    e.add_argument("--to", type=Path, required=True, help="new model directory to write")
    e.add_argument("--corpus-languages", help="comma-separated languages to learn from (default: every "
                                              "language in the corpus except English)")
    e.add_argument("--chars-per-language", type=int, default=4_000_000,
                   help="text read per language, the same for each (default 4,000,000 characters)")
    e.add_argument("--min-frequency", type=int, default=2, help="least count of a merge in the text (default 2)")
    for q in (r, e):
        q.add_argument("--country", help="country whose held-out suite to measure on and whose profile says how "
                                         "each language splits into words (default: the suite's country; "
                                         "without --suite, id)")
        q.add_argument("--suite", type=Path, help="held-out suite YAML (default recipes/<country>/heldout.yaml)")
        q.add_argument("--languages", help="comma-separated languages to report (default: all in the suite)")
        q.add_argument("--json", type=Path, help="also write the numbers here")
    p.set_defaults(run=run)


def _heldout(args) -> tuple[dict[str, list[str]], dict[str, Segmenter]]:
    """The held-out texts per language, and each language's word segmenter from the country
    profile (Thai's dictionary segmenter, white space for most), which fertility counts words by."""
    from countrytune.errors import UserError
    from countrytune.profiles import load_profile, recipes_dir
    from pipeline.scoring.suite import load_suite, text_documents

    suite_path = args.suite or recipes_dir() / (args.country or "id") / "heldout.yaml"
    suite = load_suite(suite_path)
    langs = args.languages.split(",") if args.languages else sorted(suite.text)
    missing = [lang for lang in langs if lang not in suite.text]
    if missing:
        raise UserError(f"{suite_path} has no held-out text for {missing}")
    profile = load_profile(args.country or suite.country)
    return ({lang: text_documents(suite, lang) for lang in langs},
            {lang: profile.words_of(lang) for lang in langs})


def run(args: argparse.Namespace) -> int:
    heldout, words = _heldout(args)
    if args.tokenizer_action == "report":
        return _report(args, heldout, words)
    return _extend(args, heldout, words)


def _report(args, heldout: dict[str, list[str]], words: dict[str, Segmenter]) -> int:
    from pipeline.vocabulary.fertility import measure
    from pipeline.vocabulary.sources import load_text_tokenizer

    tokenizers = [load_text_tokenizer(spec) for spec in args.tokenizer]
    rows = {tok.name: {lang: measure(tok, lang, texts, words[lang]) for lang, texts in heldout.items()}
            for tok in tokenizers}
    print_fertility(rows, {tok.name: tok.vocab_size for tok in tokenizers})
    if args.json:
        args.json.write_text(json.dumps({name: {lang: f.to_json() for lang, f in by.items()}
                                         for name, by in rows.items()}, indent=2) + "\n")
    return 0


def print_fertility(rows: dict, sizes: dict[str, int]) -> None:
    """One table: language x tokenizer. `vs eng` is the language's tokens over the English
    text's tokens with the same tokenizer: meaningful when the held-out sets are translations
    of each other (NusaX's are)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tokenizer fertility on held-out text")
    for col in ("language", "tokenizer", "vocab", "tokens/word", "bytes/token", "words in 3+ pieces", "tokens vs eng"):
        table.add_column(col, justify="left" if col in ("language", "tokenizer") else "right")
    langs = sorted({lang for by in rows.values() for lang in by})
    for lang in langs:
        for name, by in rows.items():
            f = by[lang]
            eng = by.get("eng")
            ratio = f"{f.tokens / eng.tokens:.2f}" if eng is not None else "-"
            table.add_row(lang, name, f"{sizes[name]:,}", f"{f.tokens_per_word:.2f}", f"{f.bytes_per_token:.2f}",
                          f"{f.split_share:.1%}", ratio)
        table.add_section()
    console = Console()
    console.width = max(console.width, 120)
    console.print(table)


def _extend(args, heldout: dict[str, list[str]], words: dict[str, Segmenter]) -> int:
    from rich.progress import Progress

    from pipeline.vocabulary.base import extend_base, read_corpus
    from pipeline.vocabulary.fertility import Fertility

    def log(msg: str) -> None:
        print(f"[countrytune tokenizer] {msg}", file=sys.stderr, flush=True)

    langs = args.corpus_languages.split(",") if args.corpus_languages else None
    corpus = read_corpus(args.corpus, langs, args.chars_per_language)
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("learning merges", total=args.add)
        record = extend_base(args.base, corpus, args.to, add=args.add, min_frequency=args.min_frequency,
                             heldout=heldout, words=words, log=log, progress=lambda n: bar.advance(task, n))
    before = {lang: Fertility(**{k: v for k, v in r["before"].items() if k in Fertility.__dataclass_fields__})
              for lang, r in record["fertility_on_heldout"].items()}
    after = {lang: Fertility(**{k: v for k, v in r["after"].items() if k in Fertility.__dataclass_fields__})
             for lang, r in record["fertility_on_heldout"].items()}
    print_fertility({"before": before, "after": after},
                    {"before": record["first_new_id"], "after": record["first_new_id"] + record["added_tokens"]})
    log(f"wrote {args.to}: {record['added_tokens']:,} tokens added (ids {record['first_new_id']:,}-"
        f"{record['first_new_id'] + record['added_tokens'] - 1:,}); see {args.to}/vocabulary_extension.json")
    if args.json:
        args.json.write_text(json.dumps(record["fertility_on_heldout"], indent=2) + "\n")
    return 0
