"""`countrytune prep`: the command line of data_prep."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from countrytune.artifacts.prep_output import DATA_CARD_NAME, DATA_DIR, REJECTS_DIR
from countrytune.errors import UserError
from countrytune.schema import read_yaml, validate
from data_prep.config import STAGE_ORDER, PrepConfig

EXAMPLE = """example:
  countrytune prep --country id --input corpus/ --output out/prep --workers 2
  countrytune prep --config recipes/id/prep-sample.yaml --output out/prep --stages pii
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prep", help="clean raw corpora into PII-free shards with rejects and a data card",
        description="Read, normalise, filter, redact and deduplicate a country's corpora. "
                    "Rerunning the same command resumes an interrupted run.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="prep recipe YAML (a PrepConfig); flags override it")
    p.add_argument("--country", help="country profile: a code under recipes/countries/ or a YAML path")
    p.add_argument("--input", action="append", dest="inputs", metavar="PATH",
                   help="input file, folder or glob (local or fsspec URL); repeatable")
    p.add_argument("--output", help="output folder")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGE_ORDER)} "
                                    f"(reading and writing always run)")
    p.add_argument("--workers", type=int, help="worker processes (default 2)")
    p.add_argument("--executor", choices=["local", "ray"], help="where shards run (default local)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: start a local one)")
    p.add_argument("--format", choices=["auto", "jsonl", "parquet", "text", "csv"])
    p.add_argument("--text-field", help="field or column holding the text (default: text)")
    p.add_argument("--id-field", help="field holding the document id (default: id)")
    p.add_argument("--lang-field", help="field holding the ISO 639-3 language (default: lang)")
    p.add_argument("--lang", dest="default_lang",
                   help="ISO 639-3 language of documents that carry none (default: the profile's main)")
    p.add_argument("--text-unit", choices=["line", "paragraph", "file"],
                   help="plain text: one document per line (default), paragraph or file")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-card", action="store_true", help="print DATA_CARD.md when done")
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    data = read_yaml(args.config) if args.config else {}
    for key in ("country", "output", "workers", "executor", "ray_address"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.inputs:
        data["inputs"] = args.inputs
    if args.stages is not None:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = sorted(set(stages) - set(STAGE_ORDER))
        if unknown:
            raise UserError(f"unknown stage(s) {unknown}; choose from {','.join(STAGE_ORDER)}")
        data["stages"] = stages
    reader = dict(data.get("reader") or {})
    for flag, key in (("format", "format"), ("text_field", "text_field"), ("id_field", "id_field"),
                      ("lang_field", "lang_field"), ("text_unit", "text_unit"),
                      ("default_lang", "default_lang")):
        if getattr(args, flag) is not None:
            reader[key] = getattr(args, flag)
    if reader:
        data["reader"] = reader
    if "country" not in data:
        raise UserError("no country: pass --country CODE (e.g. id) or --config RECIPE.yaml")
    return validate(PrepConfig, data, str(args.config or "command line"))


def run(args: argparse.Namespace) -> int:
    from data_prep.runner import run_prep

    cfg = config_from_args(args)
    stats = run_prep(cfg, overwrite=args.overwrite, show_progress=not args.no_progress)
    out = Path(cfg.output)
    t = stats["totals"]
    print(f"prep done: {t['records_in']:,} records in, {t['docs_out']:,} kept, "
          f"{t['rejected']:,} rejected; PII redacted: {json.dumps(stats['pii'])}")
    print(f"shards: {out / DATA_DIR}  rejects: {out / REJECTS_DIR}  card: {out / DATA_CARD_NAME}")
    if args.print_card:
        print()
        print((out / DATA_CARD_NAME).read_text(encoding="utf-8"))
    return 0
