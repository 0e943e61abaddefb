"""Where a prep job keeps each shard's files, and which of them a rerun must do again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from countrytune.atomic import atomic_write


class ShardFiles:
    """The files of shard `index`, named on demand: the main process holds one of these per
    shard for the whole run, so it keeps only the folder and the number."""

    def __init__(self, out: Path, index: int) -> None:
        self.out = out
        self.name = f"part-{index:05d}"

    def _work(self, folder: str, suffix: str) -> Path:
        return self.out / "_work" / folder / f"{self.name}{suffix}"

    pass1_docs = property(lambda self: self._work("pass1", ".parquet"))
    pass1_rejects = property(lambda self: self._work("pass1", ".rejects.parquet"))
    pass1_stats = property(lambda self: self._work("pass1", ".stats.json"))
    pass1_done = property(lambda self: self._work("pass1", ".done"))
    plan = property(lambda self: self._work("plan", ".json"))
    stats = property(lambda self: self._work("final", ".stats.json"))
    done = property(lambda self: self._work("final", ".done"))
    data = property(lambda self: self.out / "data" / f"{self.name}.parquet")
    rejects = property(lambda self: self.out / "rejects" / f"{self.name}.parquet")


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True))


def _readable(path: Path) -> bool:
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return False
    return True


def forget_unreadable(shards: list[ShardFiles]) -> list[str]:
    """Markers whose files do not read back (written by a run that predates the read-back, or
    damaged since) are removed, so the shard is done again instead of failing every rerun."""
    redone = []
    for files in shards:
        for marker, outputs in ((files.pass1_done, (files.pass1_docs, files.pass1_rejects)),
                                (files.done, (files.data, files.rejects))):
            if marker.exists() and not all(_readable(p) for p in outputs):
                marker.unlink()
                files.done.unlink(missing_ok=True)  # pass two reads pass one's files
                redone.append(files.name)
    return sorted(set(redone))
