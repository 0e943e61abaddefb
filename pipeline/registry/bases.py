"""Base models as registry packages: the trainer and the server use the very same bytes.

A recipe names its base as `registry://country/name:version` (the registry: `model.registry`,
else $COUNTRYTUNE_REGISTRY, else ./registry). Training pulls it once per machine into a cache,
verified file by file against its manifest like any pull, and on every later start checks the
cached copy again: its manifest must be the registry's, byte for byte, and every file must
still hash to it. The run records the package (ref, registry, manifest hash); export copies
that into the adapter's manifest, and `pull --with-base` fetches the same package beside it.

A version must be named: `latest` moves, and a run that resumes on another base would not be
the run it claims to be.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from countrytune.artifacts.manifest import MANIFEST_NAME, Manifest, parse_manifest
from countrytune.artifacts.run_record import BasePackageRef
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from pipeline.registry import open_registry
from pipeline.registry.refs import LATEST, Ref, parse_ref

SCHEME = "registry://"
WITH_BASE_ADAPTER, WITH_BASE_BASE = "adapter", "base"
"""The folders `pull --with-base --to DIR` writes: DIR/adapter and DIR/base."""
CACHE_ENV = "COUNTRYTUNE_CACHE"


def is_registry_ref(name_or_path: str | None) -> bool:
    return bool(name_or_path) and name_or_path.startswith(SCHEME)


def parse_base_ref(name_or_path: str) -> Ref:
    """`registry://country/name:version` -> Ref; the version is required."""
    ref = parse_ref(name_or_path.removeprefix(SCHEME))
    if ref.name is None or ref.version in (None, LATEST):
        raise UserError(f"model.name_or_path {name_or_path!r}: name the package and its version, e.g. "
                        f"{SCHEME}id/smollm2-135m:1 (`latest` moves; a run must know its base)")
    return ref


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "countrytune")


def cached_path(registry_uri: str, ref: Ref) -> Path:
    """Where this machine keeps `ref` from that registry (one folder per registry and version)."""
    registry_key = hashlib.sha256(registry_uri.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "bases" / registry_key / ref.country / ref.name / ref.version


def package_identity(folder: Path, registry_uri: str | None = None) -> BasePackageRef | None:
    """The registry identity of a pulled base package folder; None for any other folder."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    raw = path.read_bytes()
    manifest = parse_manifest(raw, str(folder))
    if manifest.kind != "base":
        return None
    return BasePackageRef(ref=f"{manifest.country}/{manifest.name}:{manifest.version}",
                          registry=registry_uri, manifest_sha256=hashlib.sha256(raw).hexdigest())


def check_files(folder: Path, manifest: Manifest) -> str | None:
    """The first file of `folder` that is missing or differs from the manifest; None if all match."""
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file() or path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            return entry.path
    return None


def fetch_base(name_or_path: str, registry_uri: str | None, *, insecure: bool = False,
               log: Callable[[str], None] = lambda msg: None) -> tuple[Path, BasePackageRef]:
    """The local, verified folder of the base package `registry://...`, pulled on first use."""
    import fcntl

    from pipeline.registry.pull import pull

    asked = parse_base_ref(name_or_path)
    registry = open_registry(registry_uri, insecure=insecure)
    ref = registry.resolve(asked)
    raw = registry.read_manifest(ref)
    where = f"{ref} in {registry.uri}"
    manifest = parse_manifest(raw, where)
    if manifest.kind != "base":
        raise UserError(f"{where} is a {manifest.kind} package, not a base model; push a base with "
                        f"`countrytune model push MODEL_DIR {ref.country}/NAME:VERSION`")
    target = cached_path(registry.uri, ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One pull per machine: processes of one job, and jobs beside it, wait for the first.
    with (target.parent / f".{ref.version}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MANIFEST_NAME).is_file():
            log(f"pulling base {ref} from {registry.uri} into {target}")
            pull(ref, registry.uri, target, insecure=insecure)
        elif (target / MANIFEST_NAME).read_bytes() != raw:
            raise UserError(f"{target} holds another {ref} than {registry.uri} does now; versions are "
                            f"immutable, so one of them was changed: find out which, then delete "
                            f"{target} to pull the registry's again")
        elif (bad := check_files(target, manifest)) is not None:
            raise UserError(f"{target}: the cached base's file {bad!r} is missing or changed since it "
                            f"was pulled; delete {target} to pull it again")
    return target, BasePackageRef(ref=str(ref), registry=registry.uri,
                                  manifest_sha256=hashlib.sha256(raw).hexdigest())


def check_base_link(adapter: Manifest, base_folder: Path) -> str | None:
    """Why the base package in `base_folder` is not the one `adapter` was trained on; None when
    it is: the same manifest bytes (which hash every file) and the same weight hashes."""
    recorded = adapter.base_model.package
    path = Path(base_folder) / MANIFEST_NAME
    if not path.is_file():
        return f"it has no {MANIFEST_NAME}: not a pulled registry package"
    raw = path.read_bytes()
    if recorded is not None and hashlib.sha256(raw).hexdigest() != recorded.manifest_sha256:
        return (f"its manifest's SHA-256 is not the {recorded.manifest_sha256[:12]}... the adapter "
                f"records for {recorded.ref}: another package under that name")
    base = parse_manifest(raw, str(base_folder))
    if base.kind != "base":
        return f"it is a {base.kind} package, not a base"
    ours = {f.path: f.sha256 for f in base.files}
    for name, digest in sorted(adapter.base_model.weights_sha256.items()):
        if ours.get(name) != digest:
            return f"its {name} is not the file the adapter was trained on (SHA-256 differs)"
    return None


def pull_with_base(ref: str, registry_uri: str | None, to: Path | str, *, insecure: bool = False,
                   require_signature: Path | str | None = None,
                   allow_older: bool = False) -> tuple[Path, Path]:
    """An adapter into TO/adapter and the base package it names into TO/base, both verified,
    the base checked by hash against the adapter's record; returns (adapter, base)."""
    import shutil

    from pipeline.registry.pull import pull

    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} exists and is not empty; pull into a new directory")
    created = not target.exists()
    adapter_dir, base_dir = target / WITH_BASE_ADAPTER, target / WITH_BASE_BASE
    try:
        pull(ref, registry_uri, adapter_dir, insecure=insecure, require_signature=require_signature,
             allow_older=allow_older)
        adapter = parse_manifest((adapter_dir / MANIFEST_NAME).read_bytes(), str(adapter_dir))
        package = adapter.base_model.package
        if adapter.kind != "lora":
            raise UserError(f"{ref} is a {adapter.kind} package: it is served as it is; pull it "
                            f"without --with-base")
        if package is None:
            raise UserError(f"{ref} names no base package: it was trained on "
                            f"{adapter.base_model.name_or_path}, not on a registry base; pull it without "
                            f"--with-base and give the server that model (`countrytune verify --base DIR` "
                            f"checks a copy by its weight hashes)")
        # From the registry the adapter came from: deployment's copy, not the trainer's address.
        pull(package.ref, registry_uri, base_dir, insecure=insecure, require_signature=require_signature,
             allow_older=allow_older)
        if (why := check_base_link(adapter, base_dir)) is not None:
            raise UserError(f"{package.ref}: not the base {ref} was trained on: {why}; refusing both")
    except BaseException:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        shutil.rmtree(base_dir, ignore_errors=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return adapter_dir, base_dir
