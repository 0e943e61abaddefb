"""The committed sample corpus is exactly what its generator writes (so neither drifts)."""

from __future__ import annotations

import pyarrow.parquet as pq

from data_prep.sample import build
from tests.conftest import SAMPLE_CORPUS


def test_generator_reproduces_committed_corpus(tmp_path):
    facts = build(tmp_path / "corpus")
    committed = sorted(p.name for p in SAMPLE_CORPUS.iterdir())
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == committed
    for name in committed:
        fresh, old = tmp_path / "corpus" / name, SAMPLE_CORPUS / name
        if name.endswith(".parquet"):
            assert pq.read_table(fresh).equals(pq.read_table(old)), name
        else:
            assert fresh.read_bytes() == old.read_bytes(), name
    assert (tmp_path / "planted.json").read_text() == (SAMPLE_CORPUS.parent / "planted.json").read_text()
    assert 250 <= facts["documents"] <= 400
