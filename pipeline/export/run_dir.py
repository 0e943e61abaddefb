"""Reading a finished training run directory (run.json's schema: countrytune/artifacts/run_record.py).

    RUN_DIR/recipe.yaml  run.json  adapter/ (or model/, method: full)  tokenizer/  [base_model/]  DONE

Relative paths inside run.json are read relative to the run directory first, then to the
current directory (the trainer may have been started from the repository root).
"""

from __future__ import annotations


from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countrytune.artifacts.prep_output import DATA_CARD_NAME, STATS_NAME, read_stats
from countrytune.errors import UserError
from countrytune.schema import read_yaml
from countrytune.artifacts.manifest import (
    DataLineage,
    InputFile,
    LanguageCount,
    PrepLineage,
    sha256_file,
    sha256_json,
)
from countrytune.artifacts.run_record import RunRecord, read_run_record


@dataclass(frozen=True)
class TrainingRun:
    """A finished run, checked and with every path resolved."""

    root: Path
    record: RunRecord
    recipe: dict[str, Any]
    adapter_dir: Path | None
    """The peft adapter (method: lora); None for a full-parameter run."""
    model_dir: Path | None
    """The whole trained model (method: full); None for a LoRA run."""
    tokenizer_dir: Path
    base_model_dir: Path | None
    """A local directory holding the base model's config.json (the run's base_model/, or
    name_or_path when that is a local directory); None for a hub id."""


def _resolve(root: Path, value: str) -> Path:
    path = Path(value)
    if path.is_absolute():
        return path
    return root / path if (root / path).exists() else Path.cwd() / path


def load_run(run_dir: Path | str) -> TrainingRun:
    """Check that `run_dir` is a finished run and read it; raise UserError saying what is missing."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such run directory")
    if not (root / "DONE").is_file():
        raise UserError(f"{root}: the run is not finished (no DONE file); wait for training to end "
                        f"or resume it, then export")
    record = read_run_record(root)
    if record.base_model.random_weights:
        raise UserError(f"{root} was trained on random weights (model.random_weights): a benchmark "
                        f"run, whose base exists nowhere; there is nothing to export")
    recipe_path = root / "recipe.yaml"
    recipe = read_yaml(recipe_path)
    _check_recipe_hash(recipe_path, record.recipe_sha256)
    adapter, model = None, None
    if record.method == "full":
        model = root / "model"
        if not (model / "config.json").is_file() or not (
                list(model.glob("*.safetensors")) or (model / "model.safetensors.index.json").is_file()):
            raise UserError(f"{model}: missing or without config.json and safetensors weights; "
                            f"the full-parameter run saved no model")
    else:
        adapter = root / "adapter"
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (adapter / name).is_file():
                raise UserError(f"{adapter / name}: missing; the run saved no peft adapter")
    tokenizer = _resolve(root, record.tokenizer.path)
    if not tokenizer.is_dir():
        raise UserError(f"{tokenizer}: the run's tokenizer directory is missing")
    base = root / "base_model"
    if record.base_model.built_tiny:
        if not (base / "config.json").is_file():
            raise UserError(f"{base}: run.json says the base model was built on the fly, "
                            f"but base_model/config.json is missing")
    else:
        local = Path(record.base_model.name_or_path)
        base = local if (local / "config.json").is_file() else None
    return TrainingRun(root, record, recipe, adapter, model, tokenizer, base)


def _check_recipe_hash(path: Path, expected: str) -> None:
    """The resolved recipe must hash (countrytune.artifacts.recipe.recipe_sha256) to what the run recorded."""
    from countrytune.artifacts.recipe import load_recipe, recipe_sha256

    if recipe_sha256(load_recipe(path)) != expected:
        raise UserError(f"{path}: its SHA-256 does not match run.json recipe_sha256 ({expected[:12]}...); "
                        f"the recipe was edited after training. Restore it, or retrain")


def read_lineage(run: TrainingRun) -> list[DataLineage]:
    """Follow each data source back to its prep run: inputs, config, shards, counts."""
    lineage = []
    for item in run.record.data:
        shards = list(item.shards)
        source = _resolve(run.root, item.source)
        stats_path = _resolve(run.root, item.stats) if item.stats else source / STATS_NAME
        card_path = _resolve(run.root, item.data_card) if item.data_card else source / DATA_CARD_NAME
        if item.stats is None and not stats_path.is_file():
            # Not a prep output (e.g. raw JSONL): nothing more to record than the shard hashes.
            lineage.append(DataLineage(source=item.source, shards=shards))
            continue
        for path, what in ((stats_path, STATS_NAME), (card_path, DATA_CARD_NAME)):
            if not path.is_file():
                raise UserError(f"{path}: the prep run's {what} named in run.json is missing; the "
                                f"package must record its data lineage. Make the prep output "
                                f"directory {item.source} readable here, then export again")
        lineage.append(DataLineage(source=item.source, shards=shards,
                                   prep=_prep_lineage(stats_path, card_path)))
    return lineage


def _prep_lineage(stats_path: Path, card_path: Path) -> PrepLineage:
    stats = read_stats(stats_path)
    languages = {lang: LanguageCount(docs_in=row.get("docs_in", 0), docs_out=row.get("docs_out", 0),
                                     chars_out=row.get("chars_out", 0))
                 for lang, row in sorted(stats.languages.items())}
    return PrepLineage(
        country=stats.country, profile=stats.profile, prepared=stats.created,
        inputs=[InputFile(path=i.path, bytes=i.bytes, sha256=i.sha256) for i in stats.inputs],
        prep_config=stats.config, prep_config_sha256=sha256_json(stats.config),
        stats_sha256=sha256_file(stats_path), data_card_sha256=sha256_file(card_path),
        totals=stats.totals.model_dump(exclude_none=True),
        languages=languages, pii_redacted=dict(stats.pii or {}), egress=stats.egress)
