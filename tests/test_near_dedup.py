"""Near-dedup planning across shards: first in input order kept, exact drops left out."""

from __future__ import annotations

from data_prep.minhash import MinHasher, MinHashParams
from data_prep.near_dedup import plan_near_duplicates

BASE = ("Harga cabai di pasar tradisional naik lagi minggu ini karena panen di daerah pegunungan "
        "terlambat dan para pedagang mengeluh pembeli berkurang sejak awal bulan")
OTHER = ("Anak-anak belajar menari tradisional di sanggar seni setiap sore setelah pulang sekolah "
         "bersama guru tari yang datang dari kota setiap hari Sabtu dan Minggu pagi")


def bands(texts):
    hasher = MinHasher(MinHashParams())
    return hasher.band_hashes(hasher.signatures(texts))


def test_cluster_spans_shards_and_keeps_the_first():
    shard0 = [OTHER, BASE]
    shard1 = [BASE + " juga", OTHER.replace("Minggu", "Senin")]
    drops, sizes = plan_near_duplicates([bands(shard0), bands(shard1)],
                                        [["a0", "a1"], ["b0", "b1"]], [{}, {}])
    assert drops == [{}, {0: "a1", 1: "a0"}]
    assert sizes == [{0: 2, 1: 2}, {}]


def test_rows_dropped_by_exact_dedup_are_not_clustered():
    shard = [BASE, BASE, BASE + " juga"]
    drops, sizes = plan_near_duplicates([bands(shard)], [["x", "y", "z"]], [{1: "x"}])
    assert drops == [{2: "x"}] and sizes == [{0: 2}]


def test_unrelated_documents_stay():
    drops, sizes = plan_near_duplicates([bands([BASE, OTHER])], [["x", "y"]], [{}])
    assert drops == [{}] and sizes == [{}]


def test_verification_drops_weak_candidates_and_loads_only_candidates():
    hasher = MinHasher(MinHashParams())
    words = BASE.split()
    texts = [BASE, " ".join(words[:-1] + ["kata"]), OTHER]
    sigs = hasher.signatures(texts)
    asked = []

    def load(shard, rows):
        asked.append(list(rows))
        return sigs[rows]

    drops, _ = plan_near_duplicates([hasher.band_hashes(sigs)], [["x", "y", "z"]], [{}], load, 0.99)
    assert drops == [{}]  # estimated Jaccard well under 0.99: not joined
    assert asked == [[0, 1]]  # the unrelated third document was never loaded
    drops, _ = plan_near_duplicates([hasher.band_hashes(sigs)], [["x", "y", "z"]], [{}], load, 0.5)
    assert drops == [{1: "x"}]
