"""The streamed dedup plan equals the in-memory planners' on the same rows, over several
spill partitions, and holds no document's key or bands longer than its partition."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data_prep.dedup_plan as dedup_plan
from data_prep.config import ExactDedupConfig
from data_prep.dedup import dedup_key, plan_duplicates
from data_prep.minhash import MinHasher, MinHashParams
from data_prep.near_dedup import plan_near_duplicates

HASHER = MinHasher(MinHashParams())
WORDS = ("harga cabai pasar naik minggu panen daerah gunung pedagang pembeli anak belajar tari "
         "sanggar sore sekolah guru kota sabtu pagi hujan sawah padi desa jalan rumah").split()


def corpus(seed: int, shards: int = 4, per_shard: int = 60) -> list[list[str]]:
    """Texts with exact copies, near copies (one or two words changed) and copies of near
    copies, spread over shards so clusters cross them."""
    rng = random.Random(seed)
    made: list[str] = []
    out = []
    for _ in range(shards):
        texts = []
        for _ in range(per_shard):
            r = rng.random()
            if made and r < 0.15:
                text = rng.choice(made)
            elif made and r < 0.35:
                words = rng.choice(made).split()
                for i in rng.sample(range(len(words)), rng.randint(1, 2)):
                    words[i] = rng.choice(WORDS)
                text = " ".join(words)
            else:
                text = " ".join(rng.choices(WORDS, k=rng.randint(30, 60)))
            made.append(text)
            texts.append(text)
        out.append(texts)
    return out


def write_pass1(folder, shards: list[list[str]]):
    """Pass-one files as the runner writes them (the columns the plan reads)."""
    paths = []
    for s, texts in enumerate(shards):
        sigs = HASHER.signatures(texts)
        bands = HASHER.band_hashes(sigs)
        table = pa.table({
            "id": [f"s{s}-{i}" for i in range(len(texts))],
            "dedup_key": pa.array([dedup_key(t, ExactDedupConfig()) for t in texts], pa.binary(16)),
            "near_bands": pa.array([b.tobytes() for b in bands], pa.binary()),
            "near_signature": pa.array([g.tobytes() for g in sigs], pa.binary()),
        })
        path = folder / f"part-{s:05d}.parquet"
        pq.write_table(table, path, row_group_size=25)  # several row groups per shard
        paths.append(path)
    return paths


def reference_plan(shards: list[list[str]], threshold: float | None):
    """What the runner planned before plans were streamed: everything in memory."""
    ids = [[f"s{s}-{i}" for i in range(len(texts))] for s, texts in enumerate(shards)]
    keys = [[dedup_key(t, ExactDedupConfig()) for t in texts] for texts in shards]
    exact = plan_duplicates(keys, ids)
    sigs = [HASHER.signatures(texts) for texts in shards]
    near_drops, near_sizes = plan_near_duplicates([HASHER.band_hashes(g) for g in sigs], ids, exact,
                                                  lambda s, rows: sigs[s][rows], threshold)
    final = {ids[s][row]: kept for s, drops in enumerate(near_drops) for row, kept in drops.items()}
    exact = [{row: final.get(kept, kept) for row, kept in plan.items()} for plan in exact]
    return [(exact[s], near_drops[s], near_sizes[s]) for s in range(len(shards))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.7, None])
def test_streamed_plan_equals_in_memory_plan(tmp_path, monkeypatch, seed, threshold):
    monkeypatch.setattr(dedup_plan, "PARTITION_RECORDS", 37)  # many partitions, odd sizes
    shards = corpus(seed)
    paths = dedup_plan.plan_dedup(write_pass1(tmp_path, shards), tmp_path / "plan", exact=True,
                                  near=True, bands=14, threshold=threshold)
    got = [dedup_plan.read_shard_plan(p) for p in paths]
    want = reference_plan(shards, threshold)
    assert got == want
    assert sum(len(exact) for exact, _, _ in got) > 10 and sum(len(near) for _, near, _ in got) > 10
    assert not (tmp_path / "plan" / "spill").exists()


def test_comparison_can_fail(tmp_path):
    """Negative control: on this corpus verification changes the plan, so a planner that
    ignored the threshold would not pass the test above."""
    shards = corpus(0)
    assert reference_plan(shards, 0.7) != reference_plan(shards, None)
    paths = dedup_plan.plan_dedup(write_pass1(tmp_path, shards), tmp_path / "plan", exact=True,
                                  near=True, bands=14, threshold=None)
    assert [dedup_plan.read_shard_plan(p) for p in paths] != reference_plan(shards, 0.7)


def test_exact_only_and_near_only(tmp_path):
    shards = corpus(3)
    paths = write_pass1(tmp_path, shards)
    want = reference_plan(shards, 0.7)
    exact_only = dedup_plan.plan_dedup(paths, tmp_path / "a", exact=True, near=False, bands=14, threshold=0.7)
    assert [dedup_plan.read_shard_plan(p)[0] for p in exact_only] == [
        plan_duplicates([[dedup_key(t, ExactDedupConfig()) for t in texts] for texts in shards],
                        [[f"s{s}-{i}" for i in range(len(t))] for s, t in enumerate(shards)])[s]
        for s in range(len(shards))]
    near_only = dedup_plan.plan_dedup(paths, tmp_path / "b", exact=False, near=True, bands=14, threshold=0.7)
    assert all(not dedup_plan.read_shard_plan(p)[0] for p in near_only)
    assert sum(len(dedup_plan.read_shard_plan(p)[1]) for p in near_only) > sum(len(n) for _, n, _ in want)


def test_empty_shards(tmp_path):
    paths = dedup_plan.plan_dedup(write_pass1(tmp_path, [[], ["eins zwei drei vier fuenf sechs"], []]),
                                  tmp_path / "plan", exact=True, near=True, bands=14, threshold=0.7)
    assert [dedup_plan.read_shard_plan(p) for p in paths] == [({}, {}, {})] * 3
