"""Typed settings of `countrytune prep`; a prep recipe YAML holds an instance of `PrepConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from countrytune.profiles import CountryProfile
from countrytune.records import ReaderConfig
from countrytune.schema import Schema

# The order steps always run in, whatever order `--stages` names them.
STAGE_ORDER = ("normalize", "langid", "quality", "pii", "dedup", "near_dedup")
StageName = Literal["normalize", "langid", "quality", "pii", "dedup", "near_dedup"]


class ExactDedupConfig(Schema):
    """Exact deduplication."""

    casefold: bool = True
    """Compare texts case-insensitively."""
    collapse_whitespace: bool = True
    """Compare texts with every run of white space read as one space."""


class NearDedupConfig(Schema):
    """MinHash + LSH near-deduplication; FineWeb-2's settings by default."""

    ngram_size: int = Field(default=5, ge=1)
    """Words per shingle."""
    bands: int = Field(default=14, ge=1)
    """LSH bands; with `rows` 8, pairs at Jaccard 0.8 are found with probability 0.92."""
    rows: int = Field(default=8, ge=1)
    """Signature values per band."""
    seed: int = 1
    """Seed of the hash permutations; a run's documents must share one."""
    verify_threshold: float | None = Field(default=0.7, ge=0, le=1)
    """An LSH candidate pair joins only if its estimated Jaccard reaches this; null joins
    every candidate (FineWeb-2's choice). Measured on planted pairs (tests/test_minhash.py):
    precision 0.86 without, 0.955 with 0.7, recall at Jaccard >= 0.8 1.0 both ways."""


class PrepConfig(Schema):
    """One `countrytune prep` run."""

    country: str
    """Country profile: a code under `recipes/countries/` (e.g. `id`) or a path to one."""
    inputs: list[str] = []
    """Input files, folders or globs; local paths or fsspec URLs."""
    output: str | None = None
    """Output folder (`data/`, `rejects/`, `stats.json`, `DATA_CARD.md`)."""
    stages: list[StageName] | None = None
    """Stages to run (reading and writing always run); default: all that the country's
    profile supports (langid needs a `langid` section)."""
    workers: int = Field(default=2, ge=1)
    """Worker processes; each takes one shard (a file, or a byte range of a big one) at a time."""
    executor: Literal["local", "ray"] = "local"
    """Where shards run: this machine's processes, or a Ray cluster (shared file system)."""
    ray_address: str | None = None
    """Ray cluster to join (e.g. `ray://head:10001` or `auto`); default: start a local one."""
    reader: ReaderConfig = ReaderConfig()
    """How inputs are read."""
    dedup: ExactDedupConfig = ExactDedupConfig()
    """Exact deduplication settings."""
    near_dedup: NearDedupConfig = NearDedupConfig()
    """Near-duplicate settings."""
    shard_bytes: int = Field(default=128 << 20, gt=0)
    """Uncompressed JSONL and line-per-document text files, and Parquet files (by row
    groups), larger than this are split into shards of about this many bytes, so one big
    file still spreads over the workers."""
    rows_per_row_group: int = Field(default=10_000, gt=0)
    """Rows per Parquet row group in written shards."""

    @field_validator("stages")
    @classmethod
    def _canonical_order(cls, stages: list[str] | None) -> list[str] | None:
        return None if stages is None else [s for s in STAGE_ORDER if s in stages]

    def stages_for(self, profile: CountryProfile) -> list[str]:
        """The stages this run executes."""
        if self.stages is not None:
            return self.stages
        return [s for s in STAGE_ORDER if s != "langid" or profile.langid is not None]
