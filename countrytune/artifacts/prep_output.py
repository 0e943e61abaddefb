"""A prep output folder: what `countrytune prep`, `sft-data` and `preference-pairs` hand to
training, tokenizer extension and export, defined once.

    FOLDER/data/         the kept records (prep: part-NNNNN.parquet; sft-data, preference-pairs:
                         train-NNNNN.jsonl)
    FOLDER/rejects/      every dropped record with its reason
    FOLDER/stats.json    `PrepStats`: counts, inputs with their SHA-256, config, egress
    FOLDER/DATA_CARD.md  the same for people

The writers (data_prep/datacard.py, data_prep/instructions.py, pipeline/preference/) write stats.json with
`write_stats`; every reader opens the folder with `open_prep_output`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from countrytune.atomic import atomic_write
from countrytune.errors import UserError
from countrytune.schema import Schema, read_json

STATS_NAME = "stats.json"
DATA_CARD_NAME = "DATA_CARD.md"
DATA_DIR = "data"
REJECTS_DIR = "rejects"
DATA_SUFFIXES = (".parquet", ".jsonl")


class Totals(Schema):
    """Documents (records, for sft-data) of the whole run: records_in = docs_out + rejected."""

    records_in: int
    docs_out: int
    rejected: int
    chars_out: int | None = None


class InputFile(Schema):
    """A raw input the run read, as it was when read."""

    path: str
    sha256: str
    bytes: int
    lang: str | None = None
    """sft-data: the language its records are in."""


class PrepStats(Schema):
    """stats.json. Fields after `software` belong to one kind of run only."""

    kind: Literal["prep", "sft-data", "preference-pairs"] = "prep"
    country: str
    profile: str
    created: str
    """When the run finished (UTC, ISO 8601)."""
    inputs: list[InputFile]
    totals: Totals
    languages: dict[str, dict[str, Any]]
    """Per language code: documents in, out, rejected, characters kept."""
    config: dict[str, Any]
    """The settings the run used (PrepConfig, or the InstructionSet of sft-data)."""
    egress: list[str] | None = None
    """What the run sent off the machine (remote inputs and outputs); [] nothing; None: not
    recorded (sft-data reads local files only)."""
    software: dict[str, str] = {}
    # prep
    stages_run: list[str] | None = None
    stages: dict[str, dict[str, Any]] | None = None
    pii: dict[str, int] | None = None
    # sft-data
    name: str | None = None
    description: str | None = None
    licence: str | None = None
    rejected: dict[str, int] | None = None
    templates: dict[str, dict[str, Any]] | None = None
    labels: dict[str, int] | None = None
    # preference-pairs
    preference: dict[str, Any] | None = None
    """How the pairs were made: the adapter that wrote the samples (path, SHA-256), samples per
    prompt, sampling settings, the verifier's order, and tallies of why each side was picked."""

    @model_validator(mode="after")
    def _every_document_accounted_for(self) -> PrepStats:
        t = self.totals
        if t.records_in != t.docs_out + t.rejected:
            raise ValueError(f"totals: records_in {t.records_in} != docs_out {t.docs_out} + "
                             f"rejected {t.rejected}")
        return self


@dataclass(frozen=True)
class PrepOutput:
    """An opened prep (or sft-data) output folder."""

    root: Path
    stats: PrepStats

    @property
    def stats_path(self) -> Path:
        return self.root / STATS_NAME

    @property
    def data_card_path(self) -> Path:
        return self.root / DATA_CARD_NAME

    def data_files(self) -> list[Path]:
        """The kept records' files, in name order."""
        return sorted(p for p in (self.root / DATA_DIR).iterdir()
                      if p.suffix in DATA_SUFFIXES and p.is_file())


def is_prep_output(folder: Path | str) -> bool:
    folder = Path(folder)
    return (folder / DATA_DIR).is_dir() and (folder / STATS_NAME).is_file()


def stats_json(stats: PrepStats) -> str:
    """The bytes of stats.json: keys sorted, so the same run writes the same file."""
    return json.dumps(stats.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False,
                      sort_keys=True) + "\n"


def write_stats(folder: Path, stats: PrepStats) -> Path:
    return atomic_write(Path(folder) / STATS_NAME, stats_json(stats))


def read_stats(path: Path) -> PrepStats:
    """A stats.json file, validated; a file that breaks the schema is refused naming the field."""
    return read_json(path, PrepStats, "; rerun the prep that wrote it")


def open_prep_output(folder: Path | str, what: str) -> PrepOutput:
    """The prep output at `folder`; `what` names it in errors (e.g. "--corpus runs/id-prep")."""
    folder = Path(folder)
    if not is_prep_output(folder):
        raise UserError(f"{what}: {folder} is not a `countrytune prep` output ({STATS_NAME} and "
                        f"{DATA_DIR}/)")
    return PrepOutput(folder, read_stats(folder / STATS_NAME))
