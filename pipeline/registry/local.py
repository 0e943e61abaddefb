"""A registry in a local (or network-mounted) directory.

    ROOT/<country>/<name>/<version>/...files    immutable once renamed into place
    ROOT/<country>/<name>/latest                a text file holding the newest version
    ROOT/<country>/<name>/.incoming-*           pushes in progress (ignored by readers)

A push copies into `.incoming-*` and renames it to `<version>`. rename(2) is atomic and
refuses a non-empty target, so of two concurrent pushes of one version exactly one wins and
readers never see a partial entry. A push holds a lock on `.incoming-*.lock` while it copies
(released by the OS if it is killed), so the next push removes the incoming folders and lock
files nobody holds: a crashed push leaves nothing behind for long, wherever it was killed.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from countrytune.atomic import atomic_write
from countrytune.errors import UserError
from countrytune.artifacts.manifest import MANIFEST_NAME
from pipeline.registry.refs import LATEST, Ref
from pipeline.registry import PackageEntry, Registry


class LocalRegistry(Registry):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _dir(self, ref: Ref) -> Path:
        """The entry's folder. Entries are real folders inside the registry: a symbolic link on
        the way (country, package or version) could point anywhere, so it is refused."""
        path = self.root
        for part in (ref.country, ref.name, ref.version):
            path = path / part
            if path.is_symlink():
                raise UserError(f"{ref}: {path} is a symbolic link; registry entries are real folders, "
                                f"so this entry was tampered with")
        return path

    def exists(self, ref: Ref) -> bool:
        return self._dir(ref).is_dir()

    def push(self, package_dir: Path, ref: Ref) -> None:
        final = self._dir(ref)
        if final.exists():
            raise UserError(f"{ref} already exists in {self.uri}; versions are immutable: push a new version")
        final.parent.mkdir(parents=True, exist_ok=True)
        incoming = final.parent / f".incoming-{ref.version}-{uuid.uuid4().hex[:8]}"
        with _held(incoming.with_name(incoming.name + ".lock")):
            _remove_abandoned(final.parent)
            try:
                shutil.copytree(package_dir, incoming)
                _fsync_tree(incoming)
                os.rename(incoming, final)
            except OSError as e:
                shutil.rmtree(incoming, ignore_errors=True)
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise UserError(f"{ref} was pushed to {self.uri} by someone else meanwhile; versions "
                                    f"are immutable: push a new version") from None
                raise
        self._set_latest(final.parent, ref.version)

    def _set_latest(self, package: Path, version: str) -> None:
        atomic_write(package / LATEST, version + "\n")  # readers see the old or the new version

    def latest_version(self, package: Ref) -> str | None:
        path = self.root / package.country / package.name / LATEST
        if path.is_symlink():
            raise UserError(f"{package}: {path} is a symbolic link, not the registry's own pointer; "
                            f"the registry was tampered with")
        if not path.is_file():
            return None
        try:
            return path.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UserError(f"{package}: {path} is not text; the registry's pointer was damaged or "
                            f"tampered with (pull a version by name)") from None

    def read_manifest(self, ref: Ref) -> bytes:
        path = self._dir(ref) / MANIFEST_NAME
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{ref}: the stored entry has no {MANIFEST_NAME}; it is damaged")
        return path.read_bytes()

    def stored_files(self, ref: Ref) -> list[str]:
        top = self._dir(ref)
        names = []
        for dirpath, dirnames, filenames in os.walk(top):  # does not follow directory links
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                rel = path.relative_to(top).as_posix()
                if path.is_symlink():
                    raise UserError(f"{ref}: stored file {rel!r} is a symbolic link; packages hold "
                                    f"regular files only, so this entry was tampered with")
                if path.is_file():
                    names.append(rel)
        return sorted(names)

    def open_file(self, ref: Ref, path: str) -> BinaryIO:
        # O_NOFOLLOW: a link swapped in after stored_files() is still not followed.
        fd = os.open(self._dir(ref) / path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        return os.fdopen(fd, "rb")

    def packages(self, country: str | None = None) -> Iterator[PackageEntry]:
        countries = [self.root / country] if country else sorted(self.root.glob("*"))
        for cdir in countries:
            if not cdir.is_dir() or cdir.name.startswith("."):
                continue
            for pdir in sorted(cdir.iterdir()):
                if not pdir.is_dir() or pdir.name.startswith("."):
                    continue
                versions = sorted(d.name for d in pdir.iterdir()
                                  if d.is_dir() and not d.name.startswith("."))
                if versions:
                    yield PackageEntry(cdir.name, pdir.name, versions,
                                       self.latest_version(Ref(cdir.name, pdir.name)))


@contextmanager
def _held(lock_path: Path):
    """An exclusive flock on lock_path while the block runs; the file is removed after."""
    import fcntl

    while True:
        f = lock_path.open("a")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same = os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        # A cleaner took this file for an orphan and unlinked it between our open and flock:
        # a lock on an unlinked file guards nothing, so take a fresh one.
        f.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        f.close()


# A `.latest-*` file older than this is the leftover of a pointer move that was killed.
STALE_POINTER_S = 600


def _remove_abandoned(package: Path) -> None:
    """What pushes that died left: incoming folders and lock files whose lock is free, and
    temporary `latest` pointers that were never renamed into place."""
    import fcntl

    for lock_path in package.glob(".incoming-*.lock"):
        incoming = lock_path.with_name(lock_path.name[:-len(".lock")])
        try:
            f = lock_path.open("r")
        except FileNotFoundError:
            continue  # its push finished meanwhile
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a push in progress
            shutil.rmtree(incoming, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
    for incoming in package.glob(".incoming-*"):
        # A folder without a lock file: a push holds its lock file from before the folder
        # exists until after it is renamed, so nobody is copying into this one (its lock
        # file was deleted by hand, or lost).
        if incoming.is_dir() and not incoming.with_name(incoming.name + ".lock").exists():
            shutil.rmtree(incoming, ignore_errors=True)
    now = time.time()
    for pointer in package.glob(".latest-*"):
        try:
            if now - pointer.stat().st_mtime > STALE_POINTER_S:
                pointer.unlink()
        except FileNotFoundError:
            pass


def _fsync_tree(top: Path) -> None:
    """Flush file contents before the rename publishes them (a crash must not leave a
    renamed entry with empty files on filesystems that reorder metadata and data)."""
    for path in top.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
