"""`run.json`: what a finished training run is, defined once. The trainer writes it (with the
lineage helpers at the end of this file), export reads it, and the export manifest reuses its
parts (metrics, per-language loss, shard references).

    RUN/recipe.yaml  run.json  adapter/  tokenizer/  [base_model/]  [heldout_eval/]  DONE
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from pydantic import ConfigDict, Field, ValidationError

from countrytune.errors import UserError
from countrytune.schema import Schema
from pipeline.evaluation.results import HeldoutResults

RUN_RECORD = "run.json"


class RunSchema(Schema):
    # A run written by a newer trainer may carry more than this one knows: read what is
    # needed rather than refuse it (the manifest, which deployment trusts, stays strict).
    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True, frozen=True)


class BaseModelRecord(RunSchema):
    """The model the adapter was trained on."""

    name_or_path: str
    """Hub id, or the local directory (absolute) the run loaded."""
    revision: str | None = None
    config_sha256: str
    """SHA-256 of the base's config as the trainer loaded it (canonical JSON of
    `model.config.to_dict()`, which includes values transformers fills in, so it is not the
    hash of the config.json file)."""
    built_tiny: bool = False
    """A tiny random model built by the recipe; it lives in RUN/base_model/."""
    random_weights: bool = False
    """The config's architecture with random weights built on the device (model.random_weights):
    a benchmark run, whose base exists nowhere."""
    model_name: str | None = None
    """From provenance.json when the base was made by `countrytune model import`."""
    licence: str | None = None
    licence_file: str | None = None
    """The licence text, relative to the base model directory."""
    imported_from: str | None = None
    gguf_sha256: str | None = None
    weights_sha256: dict[str, str] = Field(default_factory=dict)
    """Weight file name -> SHA-256, of a base loaded from a local directory (safetensors and
    their index); empty for a hub id. `countrytune verify --base DIR` checks a copy against it."""


class TokenizerRecord(RunSchema):
    path: str = "tokenizer"
    differs_from_base: bool = False
    """True when the recipe named another tokenizer or chat template: it must ship."""


class ShardRef(RunSchema):
    """A clean shard the trainer read."""

    path: str
    sha256: str
    docs: int | None = None
    """Rows of a Parquet shard; None for JSONL sources."""


class DataSourceRecord(RunSchema):
    source: str
    """The directory or file the trainer read (a `countrytune prep` output, normally)."""
    shards: list[ShardRef]
    stats: str | None = None
    """stats.json of the prep run; None when the source was not a prep output."""
    data_card: str | None = None
    docs: int | None = None


class DocCounts(RunSchema):
    read: int
    train: int
    eval: int
    rejected: dict[str, int] = Field(default_factory=dict)


class TrainingMetrics(RunSchema):
    """Totals of the training run."""

    steps: int
    tokens: int
    train_loss: float | None = None
    """Last logged training loss (None if the run logged none)."""
    wall_s: float | None = None
    """Seconds from the trainer's start to the final save."""
    world_size: int = 1


class LanguageLoss(RunSchema):
    """Held-out loss of one language on the training data's own held-out split."""

    loss: float
    perplexity: float
    tokens: int


class LanguageMix(RunSchema):
    """What training drew from one language."""

    docs: int
    """Training documents of the language."""
    share: float
    """Its share of the documents drawn (language_weights, or temperature sampling)."""
    passes: float
    """How many times the run went over its documents (above 1: repeated; below: a part)."""


class RunRecord(RunSchema):
    """run.json."""

    country: str
    name: str
    languages: list[str]
    task: str = "cpt"
    method: str = "lora"
    """lora: RUN/adapter holds a peft adapter; full: RUN/model holds every trained weight."""
    base_model: BaseModelRecord
    tokenizer: TokenizerRecord = TokenizerRecord()
    recipe_sha256: str
    """pipeline.recipe.recipe_sha256 of the resolved recipe (RUN/recipe.yaml)."""
    data: list[DataSourceRecord]
    data_docs: DocCounts | None = None
    data_mixture: dict[str, LanguageMix] = Field(default_factory=dict)
    """Language -> what the run drew from it (English replay included)."""
    metrics: TrainingMetrics
    eval: dict[str, LanguageLoss] = Field(default_factory=dict)
    kernels: dict[str, str] = Field(default_factory=dict)
    """Kernel -> "fused" or "reference: why"."""
    heldout_eval: HeldoutResults | None = None
    egress: list[str] = Field(default_factory=list)
    """What the run sent off the machine, in words; empty: nothing (pipeline.tracking.egress)."""
    software: dict[str, str] = Field(default_factory=dict)
    started: str
    finished: str

    def write(self, run_dir: Path) -> None:
        import os
        import uuid

        tmp = run_dir / f".{RUN_RECORD}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, run_dir / RUN_RECORD)


def read_run_record(run_dir: Path) -> RunRecord:
    path = Path(run_dir) / RUN_RECORD
    try:
        return RunRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no {RUN_RECORD}; is this a countrytune training run?") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UserError(f"{path}: not a valid run record: {problems}") from None


# ---- what the trainer puts into run.json ------------------------------------------------

def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("countrytune", "torch", "transformers", "peft", "accelerate", "deepspeed",
                 "tokenizers", "safetensors", "liger-kernel", "triton"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _rows(path: Path) -> int | None:
    if path.suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def data_lineage(recipe, files) -> list[dict]:
    """Per source: the prep run behind it (stats, data card) and each shard's sha256."""
    out = []
    for source in recipe.data.sources:
        root = Path(source.path)
        entry = {"source": str(root.resolve()) if root.exists() else source.path,
                 "shards": [{"path": str(f.path.resolve()), "sha256": f.sha256,
                             "docs": _rows(f.path)} for f in files if f.source == source.path]}
        if (root / "stats.json").exists():
            entry["stats"] = str((root / "stats.json").resolve())
            entry["data_card"] = str((root / "DATA_CARD.md").resolve())
            entry["docs"] = json.loads((root / "stats.json").read_text())["totals"]["docs_out"]
        out.append(entry)
    return out


def base_provenance(base_path: str) -> dict:
    """Licence and origin of a base made by `countrytune model import`, for run.json; empty for
    other bases (a hub id's licence is on its hub page)."""
    from pipeline.model_import.provenance import read_provenance

    p = read_provenance(base_path) if Path(base_path).is_dir() else None
    if p is None:
        return {}
    source = p.source.package + "==" + p.source.package_version if p.source.package else p.source.files[0]
    return {"model_name": p.model_name, "licence": p.licence.name,
            "licence_file": p.licence.file, "imported_from": f"{source} ({p.quantisation.file_type})",
            "gguf_sha256": p.source.gguf_sha256}


def weight_hashes(base_path: str) -> dict[str, str]:
    """SHA-256 of each safetensors file (and index) of a local base directory; {} for a hub id."""
    from countrytune.hashing import sha256_file

    root = Path(base_path)
    if not root.is_dir():
        return {}
    files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.safetensors.index.json"))
    return {p.name: sha256_file(p) for p in files}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
