"""`countrytune export | pull | list | show`: ship a trained adapter and get it back verified."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.registry.signing import KEY_ENV

REGISTRY_HELP = ("registry: a directory, file:///path or oci://host:port/namespace "
                 "(default: $COUNTRYTUNE_REGISTRY, else ./registry)")

EXPORT_EXAMPLE = """example:
  countrytune export out/train/id-cpt --registry oci://127.0.0.1:5000/countrytune --version 2026.11.28
  countrytune export out/train/id-cpt --registry ./registry --version 1 --merged
  countrytune export runs/id-smollm2-ext --registry ./registry --version 1 --as-base   # a country base
"""
PULL_EXAMPLE = """example:
  countrytune pull id/cpt-lora:2026.11.28 --registry oci://127.0.0.1:5000/countrytune --to adapters/id
  countrytune pull id --registry ./registry --to adapters/id      # the only package of id, latest
  countrytune pull id/cpt-lora:1.0 --registry ./registry --to serve/id --with-base   # adapter and its base
"""


def _registry_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--registry", required=required, help=REGISTRY_HELP)
    p.add_argument("--insecure", action="store_true",
                   help="plain http to a non-loopback OCI registry (loopback always uses http)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pipeline.export.compat import DEFAULT_MAX_LORA_RANK, VLLM_LORA_RANKS
    from pipeline.export.package import DEFAULT_MAX_SHARD_SIZE

    p = sub.add_parser(
        "export", help="package a finished training run and push it to a registry",
        description="Check that vLLM can serve the run's adapter, package it with its tokenizer (if "
                    "changed), a manifest (provenance, hashes) and a model card, and push it as an "
                    "immutable <country>/<name>:<version>; `latest` moves to it.",
        epilog=EXPORT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="training run directory (holds run.json and DONE)")
    p.add_argument("--version", required=True, help="package version, e.g. 2026.11.28 or 1.0")
    p.add_argument("--name", help="package name (default: the run's name, e.g. cpt-lora)")
    _registry_args(p)
    p.add_argument("--max-lora-rank", type=int, default=DEFAULT_MAX_LORA_RANK, choices=VLLM_LORA_RANKS,
                   help=f"largest LoRA rank the servers allow (default {DEFAULT_MAX_LORA_RANK})")
    p.add_argument("--allow-incompatible", action="store_true",
                   help="export even if vLLM multi-LoRA could not serve the adapter (reasons go "
                        "into the model card)")
    p.add_argument("--merged", action="store_true",
                   help="also push full merged weights as <name>-merged:<version>, for servers without LoRA")
    p.add_argument("--as-base", action="store_true",
                   help="push only a country base <name>-base:<version>: full weights with the adapter "
                        "and any trained new-token rows merged in, its tokenizer and provenance; "
                        "LoRA recipes then name its pulled directory as their base")
    p.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                   help=f"merged weights per safetensors shard (default {DEFAULT_MAX_SHARD_SIZE})")
    p.add_argument("--sign-key", type=Path, default=os.environ.get(KEY_ENV) or None,
                   help=f"ECDSA private key (countrytune keys generate) to sign every file with, as "
                        f"model.sig in the model-signing format (default: ${KEY_ENV}; unsigned when "
                        f"neither is set)")
    p.set_defaults(run=run_export)

    p = sub.add_parser(
        "pull", help="fetch a package, verify every file, write it to a new directory",
        description="Fetch country[/name][:version] (default name: the country's only package; "
                    "default version: latest), check every file's size and SHA-256 against its "
                    "manifest, and only then move it into --to.",
        epilog=PULL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", help="country[/name][:version], e.g. id/cpt-lora:1.0")
    _registry_args(p)
    p.add_argument("--to", type=Path, required=True, help="new (or empty) directory to write")
    p.add_argument("--require-signature", type=Path, metavar="PUBLIC_KEY",
                   help="refuse the package unless every file is signed by this public key (model.sig; "
                        "a legacy manifest.sig needs the old ed25519 key)")
    p.add_argument("--allow-older", action="store_true",
                   help="take a `latest` older than a package this machine pulled before (refused "
                        "otherwise: a registry whose latest moved back)")
    p.add_argument("--with-base", action="store_true",
                   help="also pull the base package the adapter was trained on (from the same "
                        "registry): --to DIR gets DIR/adapter and DIR/base, the base checked by hash")
    p.set_defaults(run=run_pull)

    p = sub.add_parser("list", help="packages and versions in a registry")
    p.add_argument("country", nargs="?", metavar="COUNTRY[/NAME]",
                   help="only this country's packages, or one package (registries without a "
                        "catalog, like GHCR, need the name)")
    _registry_args(p)
    p.set_defaults(run=run_list)

    p = sub.add_parser("show", help="what a package is: base model, languages, eval, data, files")
    p.add_argument("ref", help="country[/name][:version]")
    _registry_args(p)
    p.add_argument("--json", action="store_true", help="print the whole manifest.json")
    p.set_defaults(run=run_show)


def run_export(args: argparse.Namespace) -> int:
    from pipeline.export.package import export_run

    published: list[str] = []
    try:
        ref = export_run(args.run_dir, args.registry, args.version, args.name,
                         max_lora_rank=args.max_lora_rank, allow_incompatible=args.allow_incompatible,
                         merged=args.merged, max_shard_size=args.max_shard_size, insecure=args.insecure,
                         as_base=args.as_base, sign_key=args.sign_key, published=published)
    except KeyboardInterrupt:
        # Interrupted after the last push (cleaning up, printing): the export happened, and
        # saying "interrupted" (130) would make a scheduler push again into an immutable version.
        wanted = 1 + bool(args.merged)
        if len(published) < wanted:
            if published:
                print(f"countrytune export: interrupted after publishing {', '.join(published)} "
                      f"only", file=sys.stderr)
            raise
        print(f"countrytune export: interrupted after publishing {', '.join(published)}: the export "
              f"is complete", file=sys.stderr)
        ref = published[0]
    print(ref)
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from pipeline.export.model_card import vllm_serve_command
    from pipeline.registry.pull import pull

    base = None
    if args.with_base:
        from pipeline.registry.bases import pull_with_base

        path, base = pull_with_base(args.ref, args.registry, args.to, insecure=args.insecure,
                                    require_signature=args.require_signature, allow_older=args.allow_older)
    else:
        path = pull(args.ref, args.registry, args.to, insecure=args.insecure,
                    require_signature=args.require_signature, allow_older=args.allow_older)
    if args.require_signature:
        from pipeline.registry.signing import key_id, load_public_key

        print(f"signature by key {key_id(load_public_key(args.require_signature))} checked")
    print(f"pulled and verified into {path}")
    if base is not None:
        print(f"base pulled and verified into {base} (the base the adapter was trained on, by hash)")
    print(f"serve: {vllm_serve_command(path, base)}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.registry.refs import check_component, parse_ref
    from pipeline.registry import open_registry

    package = parse_ref(args.country) if args.country and "/" in args.country else None
    if args.country and package is None:
        check_component(args.country, "country")
    registry = open_registry(args.registry, insecure=args.insecure)
    table = Table(title=f"packages in {registry.uri}")
    for column in ("package", "latest", "versions"):
        table.add_column(column)
    if package is not None:  # one package: its tags, no catalog needed
        entry = registry.versions(package)
        entries = [entry] if entry else []
    else:
        entries = list(registry.packages(args.country))
    for e in entries:
        table.add_row(f"{e.country}/{e.name}", e.latest or "-", ", ".join(e.versions))
    if entries:
        Console().print(table)
    else:
        print(f"no packages{' for ' + args.country if args.country else ''} in {registry.uri}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from countrytune.artifacts.manifest import parse_manifest
    from pipeline.export.model_card import training_summary, vllm_command
    from pipeline.registry.refs import parse_ref
    from pipeline.registry import open_registry

    registry = open_registry(args.registry, insecure=args.insecure)
    ref = registry.resolve(parse_ref(args.ref))
    raw = registry.read_manifest(ref)
    m = parse_manifest(raw, f"{ref} in {registry.uri}")
    if args.json:
        print(raw.decode("utf-8"))
        return 0
    console = Console()
    console.print(f"[bold]{ref}[/bold]  ({m.kind}, created {m.created})")
    b = m.base_model
    if m.method is None:
        console.print(f"an imported base model: {b.name_or_path}, from {b.imported_from} (not trained here)")
    elif b.package is not None:  # the trainer's cache path is nothing to deployment: the package is
        console.print(f"base model: {b.model_name or b.name_or_path}, registry package {b.package.ref} "
                      f"(manifest {b.package.manifest_sha256[:12]}); `pull {ref} --with-base` fetches it")
    else:
        console.print(f"base model: {b.name_or_path}{' (' + b.model_name + ')' if b.model_name else ''}"
                      f"{' @ ' + b.revision if b.revision else ''}"
                      f"{' (tiny, shipped in base_model/)' if b.built_tiny else ''}")
    if b.licence:
        console.print(f"{'licence' if m.method is None else 'base model licence'}: {b.licence} "
                      f"(applies to this package too)")
    if m.languages:
        console.print(f"languages: {', '.join(m.languages)}")
    if m.adapter is not None:
        console.print(f"LoRA r={m.adapter.r} alpha={m.adapter.lora_alpha:g} on {', '.join(m.adapter.target_modules)}")
    elif m.method == "full":
        console.print("full-parameter training: every weight updated")
    if m.method is not None:
        console.print(f"training: {training_summary(m)}; recipe {m.recipe_sha256[:12]}")
    c = m.compatibility
    if c is not None:
        console.print("vLLM multi-LoRA: " + ("ok" if c.vllm_multi_lora else "NOT servable: " + "; ".join(c.problems)))
    if m.heldout_eval is not None:
        from countrytune.artifacts.results import print_table

        print_table(m.heldout_eval, "held-out evaluation, base against "
                    + ("adapter" if m.method == "lora" else "the trained model"))
    if m.eval:
        table = Table(title="in-training evaluation (held-out split of the training data)")
        for column in ("language", "loss", "perplexity", "tokens"):
            table.add_column(column, justify="right" if column != "language" else "left")
        for lang, e in sorted(m.eval.items()):
            table.add_row(lang, f"{e.loss:.4f}", "-" if e.perplexity is None else f"{e.perplexity:.2f}",
                          f"{e.tokens:,}")
        console.print(table)
    for d in m.data:
        if d.prep:
            console.print(f"data: {d.source}: {len(d.prep.inputs)} inputs -> "
                          f"{d.prep.totals.get('docs_out', 0):,} docs, {len(d.shards)} shards trained on "
                          f"(prep config {d.prep.prep_config_sha256[:12]})")
        else:
            console.print(f"data: {d.source}: {len(d.shards)} shards (not a prep output)")
    total = sum(f.size for f in m.files)
    console.print(f"files: {len(m.files)} ({total:,} bytes) + manifest.json")
    if m.kind == "lora" and b.package is not None:
        from pipeline.registry.bases import WITH_BASE_ADAPTER, WITH_BASE_BASE

        serve = vllm_command(m, f"DIR/{WITH_BASE_ADAPTER}", f"DIR/{WITH_BASE_BASE}") + "   (after pull --with-base --to DIR)"
    else:
        serve = vllm_command(m, "PACKAGE_DIR")
    console.print(f"serve: {serve}", soft_wrap=True)
    return 0
