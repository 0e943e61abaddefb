"""The Ray executor runs the same shards as the local one and writes the same output,
exact dedup across shards included."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SAMPLE_CORPUS
from tests.test_prep_run import SAMPLE_SETTINGS, table


def test_ray_output_equals_local(run_prep, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'countrytune[ray]'")
    # byte ranges of the JSONL put duplicates of one document into different shards
    settings = dict(SAMPLE_SETTINGS, shard_bytes=8000, workers=2)
    local, local_out = run_prep([SAMPLE_CORPUS], output=tmp_path / "local", **settings)
    ray, ray_out = run_prep([SAMPLE_CORPUS], output=tmp_path / "ray", executor="ray", **settings)
    for folder in ("data", "rejects"):
        assert table(ray_out / folder) == table(local_out / folder)
    for stats in (local, ray):
        stats.pop("created")
        stats["config"].pop("output"), stats["config"].pop("executor")
    assert json.dumps(ray, sort_keys=True) == json.dumps(local, sort_keys=True)
    assert len(list((ray_out / "data").glob("*.parquet"))) > 5
    assert ray["stages"]["dedup"]["rejected"]["exact_duplicate"] > 0
