"""`run.json`: what a finished training run is, defined once. The trainer writes it (with
pipeline/training/lineage.py gathering its inputs), export reads it, and the export manifest reuses its
parts (metrics, per-language loss, shard references).

    RUN/recipe.yaml  run.json  adapter/  tokenizer/  [base_model/]  [heldout_eval/]  DONE
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from countrytune.atomic import atomic_write
from countrytune.errors import UserError
from countrytune.schema import Schema
from countrytune.artifacts.results import HeldoutResults

RUN_RECORD = "run.json"


class RunSchema(Schema):
    # A run written by a newer trainer may carry more than this one knows: read what is
    # needed rather than refuse it (the manifest, which deployment trusts, stays strict).
    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True, frozen=True)


class BasePackageRef(RunSchema):
    """A base model as a registry package (kind `base`): what deployment pulls to serve an
    adapter on the very bytes it was trained on (`countrytune pull REF --with-base`)."""

    ref: str
    """`country/name:version` of the base package."""
    registry: str | None = None
    """The registry it was pulled from for training (None: a pulled folder given by path)."""
    manifest_sha256: str
    """SHA-256 of the base package's manifest.json, which hashes every file of it."""


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
    package: BasePackageRef | None = None
    """The base's registry package, when the run trained on one (`registry://` in the recipe,
    or a folder pulled from a registry)."""


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
    """Held-out loss of one language on the training data's own held-out split: per target
    token (cpt, sft), or the DPO loss per preference pair (dpo)."""

    loss: float
    perplexity: float | None = None
    """cpt, sft only."""
    tokens: int
    pairs: int | None = None
    """dpo: held-out pairs."""
    reward_accuracy: float | None = None
    """dpo: share of held-out pairs whose implicit reward prefers the chosen answer."""


class AdapterRef(RunSchema):
    """An adapter a run started from (lora.init_from)."""

    path: str
    weights_sha256: str


class PreferenceRecord(RunSchema):
    """task dpo: the loss's settings and how its pairs were made."""

    beta: float
    label_smoothing: float = 0.0
    chosen_nll: float = 0.0
    """Weight of the chosen answer's per-token NLL added to the DPO loss (0: plain DPO)."""
    reference: str = "base with the adapter switched off"
    pairs: list[dict[str, Any]] = Field(default_factory=list)
    """Per data source, its preference-pairs stats.json `preference` block: the adapter that
    wrote the samples, the verifier's order, why each side was picked (counts)."""


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
    """countrytune.artifacts.recipe.recipe_sha256 of the resolved recipe (RUN/recipe.yaml)."""
    data: list[DataSourceRecord]
    data_docs: DocCounts | None = None
    data_mixture: dict[str, LanguageMix] = Field(default_factory=dict)
    """Language -> what the run drew from it (English replay included)."""
    metrics: TrainingMetrics
    eval: dict[str, LanguageLoss] = Field(default_factory=dict)
    kernels: dict[str, str] = Field(default_factory=dict)
    """Kernel -> "fused" or "reference: why"."""
    heldout_eval: HeldoutResults | None = None
    initial_adapter: AdapterRef | None = None
    """The adapter the run started from (lora.init_from); None: a fresh LoRA."""
    preference: PreferenceRecord | None = None
    """task dpo."""
    egress: list[str] = Field(default_factory=list)
    """What the run sent off the machine, in words; empty: nothing (pipeline.training.tracking.egress)."""
    software: dict[str, str] = Field(default_factory=dict)
    started: str
    finished: str

    def write(self, run_dir: Path) -> Path:
        return atomic_write(Path(run_dir) / RUN_RECORD, self.model_dump_json(indent=2) + "\n")


def read_run_record(run_dir: Path) -> RunRecord:
    path = Path(run_dir) / RUN_RECORD
    try:
        return RunRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no {RUN_RECORD}; is this a countrytune training run?") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UserError(f"{path}: not a valid run record: {problems}") from None
