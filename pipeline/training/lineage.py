"""What the trainer records in run.json: the prep runs and shards it read, the base's origin
and weight hashes, the language mixture, the totals (countrytune/artifacts/run_record.py is
the schema)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from countrytune.artifacts.prep_output import is_prep_output, open_prep_output


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
        if is_prep_output(root):
            prep = open_prep_output(root, f"data source {source.path}")
            entry["stats"] = str(prep.stats_path.resolve())
            entry["data_card"] = str(prep.data_card_path.resolve())
            entry["docs"] = prep.stats.totals.docs_out
        out.append(entry)
    return out


def base_provenance(base_path: str) -> dict:
    """Licence and origin of a base made by `countrytune model import`, for run.json; empty for
    other bases (a hub id's licence is on its hub page)."""
    from countrytune.artifacts.provenance import base_summary, read_provenance

    p = read_provenance(base_path) if Path(base_path).is_dir() else None
    return {} if p is None else base_summary(p)


def initial_adapter(recipe):
    """lora.init_from, by its weights' SHA-256: which SFT adapter a DPO run continued."""
    from countrytune.artifacts.run_record import AdapterRef
    from countrytune.hashing import sha256_file

    if not recipe.lora.init_from:
        return None
    folder = Path(recipe.lora.init_from)
    return AdapterRef(path=str(folder.resolve()),
                      weights_sha256=sha256_file(folder / "adapter_model.safetensors"))


def preference_record(recipe):
    """task dpo: beta, and how each source's pairs were made (its stats.json)."""
    from countrytune.artifacts.run_record import PreferenceRecord

    if recipe.task != "dpo":
        return None
    made = []
    for source in recipe.data.sources:
        if is_prep_output(source.path):
            stats = open_prep_output(source.path, f"data source {source.path}").stats
            if stats.preference is not None:
                made.append({"source": str(Path(source.path).resolve()), **stats.preference})
    reference = ("adapter the run started from (lora.init_from), held frozen beside the one trained"
                 if recipe.dpo_reference_is_initial_adapter
                 else "base with the adapter switched off")
    return PreferenceRecord(beta=recipe.preference.beta, label_smoothing=recipe.preference.label_smoothing,
                            chosen_nll=recipe.preference.chosen_nll,
                            reference=reference, pairs=made)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def mix_key(recipe, key) -> str:
    """`jav`, or `jav from SOURCE` when sources are weighted."""
    return f"{key[1]} from {recipe.data.sources[key[0]].path}" if isinstance(key, tuple) else key


def mixture(recipe, counts: dict, shares: dict, passes_over_order: float) -> dict:
    """Per language (or language of a weighted source): documents, share drawn, and passes
    over its documents in the run (the order holds round(share x total) of each one's
    documents per pass; see mixed_order)."""
    from countrytune.artifacts.run_record import LanguageMix

    total = sum(counts[key] for key in shares)
    return {mix_key(recipe, key): LanguageMix(
                docs=counts[key], share=round(share, 6),
                passes=round(max(1, round(share * total)) / counts[key] * passes_over_order, 4))
            for key, share in shares.items()}


def run_record(recipe, run_dir: Path, run, plan, parts, state, final_eval: dict, heldout_results):
    """run.json of a finished run, from the loop's own records (loop.py: Run, DataPlan,
    ModelParts, Progress)."""
    import json
    import time

    from pipeline.registry.bases import package_identity
    from countrytune.artifacts.run_record import (
        BaseModelRecord,
        DataSourceRecord,
        DocCounts,
        RunRecord,
        TokenizerRecord,
        TrainingMetrics,
    )
    from countrytune.profiles import load_profile
    from countrytune.software import TRAINING, software_versions
    from pipeline.training.model import config_sha256
    from pipeline.training.tracking import egress

    last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_loss = next((m["train/loss"] for m in reversed(last) if "train/loss" in m), None)
    data, base_path = plan.data, parts.base_path
    return RunRecord(
        # The profile's code, also when the recipe names a profile file by path.
        country=load_profile(recipe.country).country, name=recipe.name, languages=plan.languages,
        task=recipe.task, method=recipe.method,
        # A local directory is recorded absolute: the vLLM and peft lines in the model card
        # must work from wherever the package is used on this machine.
        base_model=BaseModelRecord(
            name_or_path=str(Path(base_path).resolve()) if Path(base_path).is_dir()
            else recipe.model.name_or_path,
            revision=recipe.model.revision, config_sha256=config_sha256(parts.weights.causal_lm),
            built_tiny=recipe.model.tiny is not None, random_weights=recipe.model.random_weights,
            weights_sha256=parts.base_weights, **base_provenance(base_path),
            package=run.base_package or (package_identity(Path(base_path)) if Path(base_path).is_dir() else None)),
        tokenizer=TokenizerRecord(differs_from_base=recipe.tokenizer.name_or_path is not None
                                  or recipe.tokenizer.chat_template is not None),
        recipe_sha256=run.recipe_sha256,  # the recipe as written (a registry:// base unresolved)
        data=[DataSourceRecord(**entry) for entry in data_lineage(recipe, data.files)],
        data_docs=DocCounts(read=data.docs_read, train=len(data.train), eval=len(data.eval),
                            rejected=data.docs_rejected),
        data_mixture=mixture(recipe, plan.counts, plan.shares, plan.schedule.epochs_at(state.step)),
        metrics=TrainingMetrics(steps=state.step, tokens=state.tokens_seen, train_loss=train_loss,
                                world_size=run.world, wall_s=round(time.monotonic() - run.started_monotonic, 1)),
        eval=final_eval, kernels=parts.kernel_plan.summary() if parts.kernel_plan else {},
        heldout_eval=heldout_results, initial_adapter=parts.initial_adapter,
        preference=preference_record(recipe), egress=egress(recipe.tracking),
        software=software_versions(TRAINING), started=run.started, finished=now(),
    )
