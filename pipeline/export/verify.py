"""`countrytune verify`: re-check a package's lineage end to end, link by link.

    countrytune verify pulled/id-cpt                          # a pulled package folder
    countrytune verify id/cpt-lora:1 --registry R --public-key keys/programme.pub \\
        --base models/smollm2-135m --data /data/prep --inputs /data/raw

Each link is `verified`, `unverifiable` (the artefact to check against is not here: say where
it is with the options) or `broken` (it is here and does not match). The exit status is 1 when
any link is broken, else 0:

  signature        model.sig (model-signing, over every file) against --public-key
  package files    every file's size and SHA-256 against the manifest, and no file unlisted
  recipe           the recipe in the manifest hashes to its recipe_sha256
  base weights     each weight file of the base (--base DIR, or the path the run used) against
                   the hashes the trainer recorded when it loaded them
  prep records     each prep run's stats.json and DATA_CARD.md against their recorded hashes
  clean shards     each shard trained on against its recorded hash (--data DIR: where the prep
                   outputs are now, if not where training read them)
  raw inputs       each input file of each prep run (--inputs DIR, searched by file name)
                   against the hash in the data card
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from countrytune.artifacts.prep_output import DATA_CARD_NAME, STATS_NAME
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from countrytune.artifacts.manifest import MANIFEST_NAME, Manifest, parse_manifest
from pipeline.registry.bases import WITH_BASE_BASE, check_base_link
from pipeline.registry.pull import check_package_path
from pipeline.registry.signing import SIGNATURE_NAMES, check_signature

VERIFIED, UNVERIFIABLE, BROKEN = "verified", "unverifiable", "broken"


@dataclass(frozen=True)
class Link:
    name: str
    status: str
    detail: str


def _hash_check(name: str, path: Path | None, expected: str, missing_hint: str) -> Link:
    if path is None or not path.is_file():
        return Link(name, UNVERIFIABLE, f"not found{': ' + missing_hint if missing_hint else ''}")
    if sha256_file(path) != expected:
        return Link(name, BROKEN, f"{path}: SHA-256 differs from the recorded {expected[:12]}...")
    return Link(name, VERIFIED, str(path))


def signature_link(package: Path, public_key: Path | None) -> Link:
    if public_key is None:
        signed = any((package / name).is_file() for name in SIGNATURE_NAMES)
        return Link("signature", UNVERIFIABLE, "signed; give --public-key to check it" if signed
                    else "the package is not signed")
    try:
        return Link("signature", VERIFIED, check_signature(package, public_key, str(package)))
    except UserError as e:
        return Link("signature", BROKEN, str(e))


def file_links(package: Path, manifest: Manifest) -> Iterator[Link]:
    listed, broken = set(), 0
    for entry in manifest.files:
        check_package_path(entry.path, str(package))
        listed.add(entry.path)
        path = package / entry.path
        if not path.is_file() or path.is_symlink():
            broken += 1
            yield Link(f"file {entry.path}", BROKEN, "missing from the package")
        elif path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            broken += 1
            yield Link(f"file {entry.path}", BROKEN, "size or SHA-256 differs from the manifest")
    extra = sorted(p.relative_to(package).as_posix() for p in package.rglob("*")
                   if p.is_file() and p.relative_to(package).as_posix() not in listed | {MANIFEST_NAME, *SIGNATURE_NAMES})
    for name in extra:
        yield Link(f"file {name}", BROKEN, "in the package but not in the manifest")
    if not broken and not extra:
        yield Link("package files", VERIFIED, f"{len(manifest.files)} files match the manifest")


def recipe_link(manifest: Manifest) -> Link:
    from countrytune.schema import validate
    from countrytune.artifacts.recipe import TrainRecipe, recipe_sha256

    try:
        recipe = validate(TrainRecipe, manifest.recipe, "the manifest's recipe")
    except UserError as e:
        return Link("recipe", BROKEN, str(e))
    if recipe_sha256(recipe) != manifest.recipe_sha256:
        return Link("recipe", BROKEN, "the recipe in the manifest does not hash to recipe_sha256: it was edited")
    return Link("recipe", VERIFIED, f"sha256 {manifest.recipe_sha256[:12]}...")


def base_links(manifest: Manifest, package: Path, base: Path | None) -> Iterator[Link]:
    b = manifest.base_model
    if b.built_tiny:
        yield Link("base weights", VERIFIED, "a tiny base built by the recipe; shipped in the package "
                   "(covered by the package files)")
        return
    if not b.weights_sha256:
        yield Link("base weights", UNVERIFIABLE, f"no weight hashes recorded for {b.name_or_path} "
                   "(a hub model, or a package from an older countrytune)")
        return
    if manifest.method is None:  # an imported base: its weights are this package's own files
        root = package
    else:  # --base, else the base `pull --with-base` put beside the adapter, else the trainer's path
        beside = package.parent / WITH_BASE_BASE
        root = base or (beside if b.package is not None and (beside / MANIFEST_NAME).is_file()
                        else Path(b.name_or_path))
    if not root.is_dir():
        yield Link("base weights", UNVERIFIABLE, f"{root} is not here; give --base DIR (a copy of "
                   f"{b.model_name or b.name_or_path}"
                   f"{', or pull with --with-base' if b.package is not None else ''})")
        return
    if b.package is not None and manifest.method is not None and (root / MANIFEST_NAME).is_file():
        why = check_base_link(manifest, root)
        yield Link("base package", BROKEN if why else VERIFIED,
                   f"{root}: {why}" if why else f"{root} is {b.package.ref}, manifest SHA-256 "
                                                f"{b.package.manifest_sha256[:12]}... as recorded")
    for name, digest in sorted(b.weights_sha256.items()):
        yield _hash_check(f"base weights {name}", root / name, digest, f"not in {root}")


def _find_source(recorded: str, data_dirs: list[Path]) -> list[Path]:
    """Where a prep output may be now: where training read it, or under a --data folder."""
    source = Path(recorded)
    return [source, *data_dirs] + [d / source.name for d in data_dirs]


def data_links(manifest: Manifest, data_dirs: list[Path], input_dirs: list[Path]) -> Iterator[Link]:
    for d in manifest.data:
        roots = [r for r in _find_source(d.source, data_dirs) if r.is_dir()]
        root = next((r for r in roots if (r / STATS_NAME).is_file()), roots[0] if roots else None)
        hint = f"give --data DIR (where {Path(d.source).name} is now)"
        if d.prep is not None:
            yield _hash_check(f"prep stats {d.source}", root / STATS_NAME if root else None,
                              d.prep.stats_sha256, hint)
            yield _hash_check(f"data card {d.source}", root / DATA_CARD_NAME if root else None,
                              d.prep.data_card_sha256, hint)
        for shard in d.shards:
            path = Path(shard.path)
            try:
                rel = path.relative_to(d.source)
            except ValueError:
                rel = Path(path.name)
            found = next((r / rel for r in roots if (r / rel).is_file()), None)
            yield _hash_check(f"shard {rel}", found, shard.sha256, hint)
        if d.prep is None:
            continue
        for item in d.prep.inputs:
            recorded = Path(item.path)
            # Only under the folders given: a recorded absolute path is where prep read it then.
            under = [recorded.name] if recorded.is_absolute() else [str(recorded), recorded.name]
            found = next((base / rel for base in input_dirs for rel in under if (base / rel).is_file()), None)
            name = recorded.name
            hint = "give --inputs DIR (the raw files prep read)" if not input_dirs else f"no {name} in --inputs"
            yield _hash_check(f"raw input {item.path}", found, item.sha256, hint)


def identity_link(manifest: Manifest, ref) -> Link:
    """The manifest says which package and version it is; a stored entry that names another
    (a signed version folder copied to a new version number: a replay) is broken, as pull
    refuses it."""
    described = f"{manifest.country}/{manifest.name}:{manifest.version}"
    if (manifest.country, manifest.name, manifest.version) != (ref.country, ref.name, ref.version):
        return Link("identity", BROKEN, f"the entry {ref} holds a manifest describing {described}: "
                    f"relabelled or replayed")
    return Link("identity", VERIFIED, f"{ref} holds the manifest of {described}")


def verify_package(package: Path, *, public_key: Path | None = None, base: Path | None = None,
                   data_dirs: list[Path] = (), input_dirs: list[Path] = (), ref=None) -> list[Link]:
    """Every link of a package folder's lineage, in order; `ref`: the registry entry it came
    from, whose name and version the manifest must carry."""
    links = [signature_link(package, public_key)]
    try:
        manifest = parse_manifest((package / MANIFEST_NAME).read_bytes(), str(package))
    except UserError as e:  # edited into something that is not a manifest: nothing below holds
        return links + [Link("manifest", BROKEN, str(e))]
    if ref is not None:  # a folder has no entry name to hold the manifest to
        links.append(identity_link(manifest, ref))
    links += list(file_links(package, manifest))
    if manifest.method is not None:  # an imported base was not trained: it has no recipe
        links.append(recipe_link(manifest))
    links += list(base_links(manifest, package, base))
    links += list(data_links(manifest, list(data_dirs), list(input_dirs)))
    return links


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-check a package's lineage: signature, files, recipe, base, data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", help="a pulled package folder, or a ref (country/name:version) with --registry")
    p.add_argument("--registry", help="registry holding the ref (a directory, file:// or oci://)")
    p.add_argument("--insecure", action="store_true", help="plain http to a non-loopback OCI registry")
    p.add_argument("--public-key", type=Path,
                   help="public key (countrytune keys generate) that must have signed every file (model.sig)")
    p.add_argument("--base", type=Path, help="a local copy of the base model to check its weights")
    p.add_argument("--data", type=Path, action="append", default=[],
                   help="folder holding the prep outputs trained on, if moved (repeatable)")
    p.add_argument("--inputs", type=Path, action="append", default=[],
                   help="folder holding the raw input files of prep (repeatable)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="countrytune-verify-") as tmp:
        package, ref = Path(args.package), None
        if not (package / MANIFEST_NAME).is_file():
            if args.registry is None:
                raise UserError(f"{args.package}: not a package folder (no {MANIFEST_NAME}); to verify a "
                                f"ref, give --registry")
            package, ref = _fetch_unverified(args.package, args.registry, Path(tmp) / "package", args.insecure)
        links = verify_package(package, public_key=args.public_key, base=args.base,
                               data_dirs=args.data, input_dirs=args.inputs, ref=ref)
    table = Table(title=f"lineage of {args.package}")
    for column in ("link", "status", "detail"):
        table.add_column(column, overflow="fold")
    colour = {VERIFIED: "green", UNVERIFIABLE: "yellow", BROKEN: "bold red"}
    for link in links:
        table.add_row(link.name, f"[{colour[link.status]}]{link.status}[/]", link.detail)
    Console(width=160).print(table)
    counts = {s: sum(link.status == s for link in links) for s in (VERIFIED, UNVERIFIABLE, BROKEN)}
    print(f"{counts[VERIFIED]} verified, {counts[UNVERIFIABLE]} unverifiable, {counts[BROKEN]} broken",
          file=sys.stderr)
    return 1 if counts[BROKEN] else 0


def _fetch_unverified(ref_text: str, registry_uri: str, dest: Path, insecure: bool):
    """Copy a stored package as it is (names checked, contents not): verify judges the contents
    link by link, where pull would stop at the first mismatch. Returns (folder, resolved ref)."""
    from pipeline.registry.refs import parse_ref
    from pipeline.registry import open_registry

    registry = open_registry(registry_uri, insecure=insecure)
    ref = registry.resolve(parse_ref(ref_text))
    dest.mkdir(parents=True)
    (dest / MANIFEST_NAME).write_bytes(registry.read_manifest(ref))
    for name in registry.stored_files(ref):
        if name == MANIFEST_NAME:
            continue
        check_package_path(name, f"{ref} in {registry.uri}")
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        with registry.open_file(ref, name) as src, (dest / name).open("wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    return dest, ref
