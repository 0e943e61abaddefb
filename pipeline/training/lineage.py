"""What the trainer records in run.json about its inputs: the prep runs and shards it read,
the base's origin and weight hashes (countrytune/artifacts/run_record.py is the schema)."""

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
    from countrytune.artifacts.provenance import read_provenance

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
