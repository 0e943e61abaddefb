"""One writer per output folder, and workers that do not outlive the process that started them.

Used by the trainer (its run folder) and by prep (its output folder): two jobs started into one
folder would otherwise race over the same files (prep's temporary shard names collided, and a
corrupt shard was marked done).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from countrytune.errors import UserError

LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive flock on FOLDER/.lock, held until `release` or the process's death (the OS
    releases it then: no stale lock after a kill). The file names its holder."""

    def __init__(self, folder: Path, what: str, advice: str) -> None:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOCK_NAME
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"{folder} is in use by another {what} ({holder}); {advice}") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self.file.flush()

    def release(self) -> None:
        self.file.close()  # closing the descriptor releases the flock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send this process `sig` when its parent dies (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
