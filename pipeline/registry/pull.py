"""`pull`: fetch a package and prove it is the one that was pushed before anyone can load it.

Every file is streamed through SHA-256 into a temporary directory beside the target and
compared with the manifest (size and hash); names are checked before anything is written;
only a fully verified package is renamed into place. So `--to` either holds the exact
package or does not exist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

from countrytune.errors import UserError
from countrytune.locations import check_location
from countrytune.artifacts.manifest import MANIFEST_NAME, Manifest, parse_manifest
from pipeline.registry.refs import LATEST, Ref, parse_ref
from pipeline.registry import Registry, open_registry
from pipeline.registry.signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAMES,
    check_signature,
    require_signed,
)

_CHUNK = 1 << 20


def check_package_path(path: str, where: str) -> None:
    """Refuse a file name that could land outside the package directory."""
    parts = path.split("/")
    if (not path or "\\" in path or "\0" in path or path.startswith("/")
            or PurePosixPath(path).is_absolute() or (len(parts[0]) >= 2 and parts[0][1] == ":")
            or any(p in ("", ".", "..") for p in parts)):
        raise UserError(f"{where}: refusing file name {path!r}: it is absolute or would leave the "
                        f"package directory; the package was tampered with")


def check_file_list(manifest: Manifest, stored: list[str], where: str) -> None:
    """Names safe, none twice, none both a file and a folder, and exactly the stored files."""
    listed = [f.path for f in manifest.files]
    for path in listed + stored:
        check_package_path(path, where)
    if len(set(stored)) != len(stored):
        raise UserError(f"{where}: the stored package holds a file name twice; it was tampered with")
    if len(set(listed)) != len(listed) or MANIFEST_NAME in listed:
        raise UserError(f"{where}: the manifest lists a file twice (or lists itself); the package is damaged")
    folders = {"/".join(p.split("/")[:i]) for p in listed for i in range(1, p.count("/") + 1)}
    if clash := sorted(folders & set(listed)):
        raise UserError(f"{where}: {clash[0]!r} is listed both as a file and a folder")
    stored_set = set(stored) - {MANIFEST_NAME, *SIGNATURE_NAMES}
    if missing := sorted(set(listed) - stored_set):
        raise UserError(f"{where}: file {missing[0]!r} is in the manifest but not in the stored "
                        f"package; it is incomplete")
    if extra := sorted(stored_set - set(listed)):
        raise UserError(f"{where}: file {extra[0]!r} is stored but not in the manifest; refusing "
                        f"unverifiable content")


def _read_signature(registry: Registry, ref: Ref, name: str) -> bytes:
    with registry.open_file(ref, name) as src:
        data = src.read(MAX_SIGNATURE_BYTES + 1)
    if len(data) > MAX_SIGNATURE_BYTES:
        raise UserError(f"{ref}: {name} is larger than a signature can be; refusing the package")
    return data


def _fetch_verified(registry: Registry, ref: Ref, path: str, size: int, sha256: str, dest: Path) -> None:
    h, n = hashlib.sha256(), 0
    with registry.open_file(ref, path) as src, dest.open("xb") as out:
        # Read at most one byte past the declared size: enough to tell "longer", never unbounded.
        while n <= size and (chunk := src.read(min(_CHUNK, size + 1 - n))):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
    if n != size:
        how = "truncated" if n < size else "longer than recorded"
        raise UserError(f"{ref}: file {path!r} is {how} ({n if n < size else 'over ' + str(size)} "
                        f"bytes, manifest says {size}); the package is damaged or was tampered with")
    if h.hexdigest() != sha256:
        raise UserError(f"{ref}: file {path!r} does not match its SHA-256 in the manifest; the package "
                        f"was modified after export (tampered or corrupted): do not use it")


def _check_target(target: Path) -> None:
    """A new or empty real folder: never a link (the package would land where it points), a
    path under a file, or a non-empty folder."""
    if target.is_symlink():
        raise UserError(f"--to {target} is a symbolic link; pull into a new folder, not through a link")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--to {target}: {parent} is a file, not a folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} exists and is not empty; pull into a new directory")


def pull(ref: str | Ref, registry_uri: str | None, to: Path | str, *, insecure: bool = False,
         require_signature: Path | str | None = None, allow_older: bool = False) -> Path:
    """Fetch `ref` (`country[/name][:version]`) into the new directory `to`, verified; return it.
    require_signature: the public key that must have signed every file (signing.py). allow_older:
    take a `latest` older than what this machine pulled before (rollback.py)."""
    from pipeline.registry import rollback

    registry = open_registry(registry_uri, insecure=insecure)
    asked = parse_ref(ref) if isinstance(ref, str) else ref
    ref = registry.resolve(asked)
    target = Path(to)
    check_location(target, ref.country, "pull target")
    _check_target(target)
    where = f"{ref} from {registry.uri}"
    raw = registry.read_manifest(ref)
    stored = registry.stored_files(ref)
    signatures = {name: _read_signature(registry, ref, name) for name in SIGNATURE_NAMES if name in stored}
    if require_signature is not None:  # a bad key or an unsigned package: refused before any fetch
        require_signed(list(signatures), require_signature, where)
    manifest = parse_manifest(raw, where)
    if (manifest.country, manifest.name, manifest.version) != (ref.country, ref.name, ref.version):
        raise UserError(f"{where}: the manifest describes {manifest.country}/{manifest.name}:"
                        f"{manifest.version}; the entry was relabelled or tampered with")
    check_file_list(manifest, stored, where)
    rollback.check_not_older(ref.package, ref.version, manifest.created, where=where, allow_older=allow_older,
                             explicit_version=asked.version not in (None, LATEST))

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as e:
        raise UserError(f"--to {target}: cannot create a folder there ({e.strerror}); pull into a "
                        f"new folder where you can write") from None
    try:
        for entry in manifest.files:
            dest = staging / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            _fetch_verified(registry, ref, entry.path, entry.size, entry.sha256, dest)
        (staging / MANIFEST_NAME).write_bytes(raw)
        for name, signature in signatures.items():  # kept, so `countrytune verify` can check it again later
            (staging / name).write_bytes(signature)
        if require_signature is not None:  # the whole hash-checked folder, before it is moved into place
            check_signature(staging, require_signature, where)
        if target.is_dir():
            target.rmdir()  # empty (checked above); rename needs the name free
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    rollback.record(ref.package, ref.version, manifest.created)
    return target
