"""A language's character model (data_prep/charlm.py): scrambled text scores far above real
text, on text it never saw, and the model Saudi Arabia's profile ships is the one its command
makes from the PUD split."""

from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from countrytune.errors import UserError
from data_prep.charlm import CharModel
from data_prep.quality import script_letters

ROOT = Path(__file__).resolve().parents[1]


def _held_out(sentence_id: str) -> bool:  # bench/thai_chain.py's split: whole documents, 1 in 5
    return int(hashlib.sha256(sentence_id[:6].encode()).hexdigest(), 16) % 5 == 0


def _pud_arabic(shared_data: Path) -> tuple[list[str], list[str]]:
    with (shared_data / "pud" / "arb-dev.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return ([r["text"] for r in rows if not _held_out(r["id"])], [r["text"] for r in rows if _held_out(r["id"])])


def test_scrambled_arabic_scores_above_real_arabic_it_never_saw(shared_data):
    from countrytune.profiles import load_profile

    train, held = _pud_arabic(shared_data)
    model = CharModel.train(train)
    limit = load_profile("sa").thresholds_for("arb").max_char_bits
    letters = script_letters("Arab")
    real = [model.bits_per_char(t, letters) for t in held]
    rng = random.Random(0)
    scrambled = [model.bits_per_char("".join(rng.sample(t, len(t))), letters) for t in held + train]
    assert max(real) < limit < min(scrambled), (max(real), limit, min(scrambled))
    # Latin brand names inside Arabic are not scored: no penalty for them.
    assert model.bits_per_char(held[0] + " iPhone Galaxy", letters) == pytest.approx(real[0])


def test_the_shipped_model_is_the_one_its_command_makes(shared_data):
    shipped = CharModel.load(ROOT / "data_prep" / "models" / "charlm-arb.npz")
    made = CharModel.train(_pud_arabic(shared_data)[0])
    assert shipped.total == made.total
    for name in ("uni", "bi", "tri", "ctx1", "ctx2"):
        assert np.array_equal(getattr(shipped, name), getattr(made, name)), name
    assert "CC BY-SA 3.0" in " ".join(shipped.meta["sources"])


def test_save_load_and_a_file_that_is_not_a_model(tmp_path):
    english = ["the cat sat on the mat and looked at the dog", "a dog and a cat are friends in the house"]
    model = CharModel.train(english * 20)
    model.save(tmp_path / "m.npz")
    again = CharModel.load(tmp_path / "m.npz")
    assert again.bits_per_char("the dog sat") == pytest.approx(model.bits_per_char("the dog sat"))
    assert model.bits_per_char("the dog sat") < model.bits_per_char("xq zvk jtw")
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a countrytune character model"):
        CharModel.load(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="no text"):
        CharModel.train(["", "  "])
