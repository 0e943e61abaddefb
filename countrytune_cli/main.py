"""`countrytune`: one command line for every stage. Each stage registers its subcommand.

Exit codes: 0 done; 2 a problem the user can fix (the message says how); 1 a bug
(traceback printed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from countrytune import __version__
from countrytune.errors import run_command


def build_parser() -> argparse.ArgumentParser:
    # Subcommand modules are imported here, not at package import: each keeps its heavy
    # imports (pyarrow, torch) inside its run function, so `--help` stays instant.
    from data_prep import cli as prep_cli
    from data_prep import instructions
    from data_prep import charlm, langid_train
    from launch import cli as launch_cli
    from pipeline.training import loop as train
    from pipeline.evaluation import cli as eval_cli
    from pipeline.export import cli as export_cli
    from pipeline.export import base_package, verify
    from pipeline.registry import signing
    from pipeline.model_import import cli as model_cli
    from pipeline.preference import pairs as preference_pairs
    from pipeline.vocabulary import cli as vocabulary_cli

    parser = argparse.ArgumentParser(
        prog="countrytune",
        description="Turn a country's raw local-language corpora into a servable LoRA adapter.")
    parser.add_argument("--version", action="version", version=f"countrytune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    prep_cli.add_parser(sub)
    langid_train.add_parser(sub)
    charlm.add_parser(sub)
    instructions.add_parser(sub)
    base_package.add_parser(model_cli.add_parser(sub))  # `model import` and `model push`
    vocabulary_cli.add_parser(sub)
    preference_pairs.add_parser(sub)
    train.add_parser(sub)
    eval_cli.add_parser(sub)
    export_cli.add_parser(sub)
    signing.add_parser(sub)
    verify.add_parser(sub)
    launch_cli.add_parser(sub)
    for command in sub.choices.values():
        add_verbose(command)
    return parser


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own output (progress bars, warnings, log lines); "
                             "otherwise it goes to library.log in the output folder")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every stage: a Ctrl-C often lands here
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("countrytune: interrupted before anything started", file=sys.stderr)
        return 130
    return run_command(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
