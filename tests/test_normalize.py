"""Normalisation repairs encoding damage and white space and changes nothing else."""

from __future__ import annotations

import unicodedata

import pytest

from countrytune.document import Document, Drop
from data_prep.normalize import Normalize
from data_prep.sample import mojibake


def norm(text):
    step = Normalize()
    out = step.process(Document(id="x", text=text, source="s", lang="sun"))
    return (out if isinstance(out, Drop) else out.text), step.counters


@pytest.mark.parametrize("original", [
    "Harga cabé di pasar naék deui minggu ieu.",
    "Elé-elé okko kampokku bosi maséro, na anana'é lao ri sikolaé.",
    "Café ‘Kopi’ — buka 24 jam…",
])
def test_mojibake_is_repaired(original):
    damaged = mojibake(original)
    assert damaged != original
    fixed, counters = norm(damaged)
    assert fixed == original
    assert counters["mojibake_repaired"] == 1


def test_nfc_control_characters_and_spaces():
    decomposed = unicodedata.normalize("NFD", "Pamaréntah désa")
    assert norm(decomposed)[0] == "Pamaréntah désa"
    assert norm("satu\x07 dua\x1b")[0] == "satu dua"
    assert norm("  satu\u00a0\u00a0dua\t tiga \r\n\r\n\r\n\r\nempat\u200b  ")[0] == "satu dua tiga\n\nempat"


def test_real_characters_are_left_alone():
    for text in ["“kutipan” ‘tunggal’", "ﬁle ＡＢＣ", "Teks ASCII biasa, tanpa apa-apa."]:
        assert norm(text)[0] == text


def test_text_that_normalises_to_nothing_is_dropped():
    out, _ = norm("\u200b \x07 \u00a0")
    assert isinstance(out, Drop) and out.reason == "empty_after_normalize"


def test_real_text_is_unchanged_except_spacing(shared_data):
    import csv

    for row in csv.DictReader(open(shared_data / "nusa-writes" / "paragraph-sun-valid.csv", encoding="utf-8")):
        out, _ = norm(row["text"])
        expected = unicodedata.normalize("NFC", row["text"]).replace("\u200b", "").replace("\ufeff", "")
        assert " ".join(out.split()) == " ".join(expected.split())


def test_script_cleanups_happen_only_when_the_profile_asks():
    from countrytune.profiles import NormalizeSpec
    from data_prep.normalize import DIGITS_TO_ASCII

    text = "\u200fالعـــربية\u200e مع ١٢٣ و ๑๒๓ و ۴۵"
    kept = Normalize()  # defaults: nothing script-specific changes
    doc = Document(id="a", text=text, source="t", lang="arb")
    assert kept.process(doc).text == text
    step = Normalize(NormalizeSpec(remove_tatweel=True, remove_bidi_controls=True, fold_digits=True))
    out = step.process(Document(id="b", text=text, source="t", lang="arb")).text
    assert out == "العربية مع 123 و 123 و 45"
    assert {"tatweel_removed", "bidi_controls_removed", "digits_folded"} <= set(step.counters)
    assert len(text.translate(DIGITS_TO_ASCII)) == len(text)  # one for one: PII offsets hold
    harakat = "كَتَبَ"
    assert step.process(Document(id="c", text=harakat, source="t", lang="arb")).text == harakat  # meaning kept
