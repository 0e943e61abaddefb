"""File hashing shared by prep, training lineage, model import and export manifests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20  # 1 MiB reads: hashing speed is flat above ~64 KiB, memory stays small


def sha256_stream(f: BinaryIO) -> tuple[str, int]:
    """Hex sha256 and byte count of a binary stream (a local file or an fsspec URL's)."""
    h, size = hashlib.sha256(), 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    with Path(path).open("rb") as f:
        return sha256_stream(f)[0]


def weight_hashes(model_dir: Path | str) -> dict[str, str]:
    """SHA-256 of each safetensors file (and index) of a local model directory; {} for a hub id.
    What an adapter records of the base it was trained on, and what verify checks a base by."""
    root = Path(model_dir)
    if not root.is_dir():
        return {}
    files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.safetensors.index.json"))
    return {p.name: sha256_file(p) for p in files}
