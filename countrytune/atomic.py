"""Files and directories that appear whole or not at all.

A file is written under a temporary sibling name and renamed over its target (`atomic_write`).
A directory is built under a temporary sibling name (unique across processes and pods on a
shared volume) and renamed into place when complete, so a process killed mid-write leaves a
`.NAME.*.tmp` folder, never a half-written NAME. `clean_stale` removes such leftovers.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from countrytune.errors import UserError

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():  # an older complete copy: replaced (the window is one rename)
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old{TMP_SUFFIX}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(target: Path, data: str | bytes, *, sync: bool = False) -> Path:
    """Write `data` (text as UTF-8) to `target` through a temporary sibling and one rename, so
    a reader sees the old file or the new one, never a part. sync: flush to disk before the
    rename (a completion marker written next may not overtake the data on a crash)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_new_folder(to: Path) -> None:
    """`to` may be written whole: it does not exist, or is an empty folder (a stage that builds
    a model directory with atomic_dir checks this before minutes of work)."""
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"{to} already exists; write into a new directory (or delete it first)")


def clean_stale(folder: Path) -> list[str]:
    """Remove temporary leftovers of killed writers directly inside `folder`; returns their names.
    Call only where no other writer can be active (e.g. under the run folder's lock)."""
    removed = []
    for path in Path(folder).glob(f".*{TMP_SUFFIX}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def remove_named(folder: Path, names) -> list[str]:
    """Remove the entries `names` of `folder` (folders whole, files and links themselves, never
    what a link points to) and nothing else; returns the names that were there. How a stage
    clears what it wrote without touching a user's other files."""
    removed = []
    for name in names:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
