"""Quality rules: each catches its kind of junk, thresholds are per language, real text stays."""

from __future__ import annotations

import csv

import pytest

from countrytune.profiles import CountryProfile, load_profile
from countrytune.schema import read_yaml
from countrytune.document import Document, Drop
from data_prep.quality import (QualityFilter, duplicate_line_fractions, duplicate_ngram_char_fraction,
                               top_ngram_char_fraction)
from tests.conftest import ROOT

SUNDANESE = ("Patani di lamping gunung melak kopi jeung sayuran ku cara anu henteu ngaruksak alam. "
             "Barudak diajar ngibing di sanggar unggal soré sanggeus balik ti sakola.")


INDONESIA = QualityFilter(load_profile("id"))


def verdict(text, lang="sun", profile=None):
    step = QualityFilter(profile) if profile else INDONESIA
    out = step.process(Document(id="x", text=text, source="s", lang=lang))
    return out.reason if isinstance(out, Drop) else "kept"


def test_repetition_measures():
    assert duplicate_line_fractions(["a", "b", "a", "a"]) == (0.5, 0.5)
    words = "aku lan kowe aku lan kowe".split()
    assert top_ngram_char_fraction(words, 2) == pytest.approx(2 * 6 / 20)
    assert top_ngram_char_fraction("satu dua tiga".split(), 2) == 0.0
    assert duplicate_ngram_char_fraction("a b c d e a b c d e x".split(), 5) == pytest.approx(10 / 11)


@pytest.mark.parametrize("text, reason", [
    ("ok sip", "too_few_words"),
    ("1 2 3 4 5 6 7 8 9 10 11 12", "mean_word_length"),
    ("#promo #diskon #murah #gratis #hemat #sale", "symbol_ratio"),
    ("Baca selengkapnya...\nBerita terkini...\nPromo hari ini...\nSimak juga...", "symbol_ratio"),
    ("12.000 45.000 67.000 barang 89.000 10.000 23.000 harga 45.000 kurs", "alpha_words_ratio"),
    ("klik di sini sekarang juga\n" * 6, "duplicate_lines"),
    ("mangga dibaca heula " * 20, "few_stop_words"),
    (SUNDANESE + " " + ("meuli murah pisan di dieu ayeuna " * 12), "top_"),
])
def test_each_rule_catches_its_junk(text, reason):
    assert verdict(text).startswith(reason)


def test_real_looking_text_passes():
    assert verdict(SUNDANESE) == "kept"


def test_stop_words_are_the_documents_language():
    javanese = ("Simbah isih kuwat mlaku menyang sawah saben esuk senajan umure wis pitung puluh taun, "
                "lan saben sore isih seneng nandur kembang ing ngarep omah karo putune sing cilik.")
    assert verdict(javanese, "jav") == "kept"
    # Judged as Sundanese the same text holds none of Sundanese's function words.
    assert verdict(javanese, "sun") == "few_stop_words"


def test_language_without_stop_words_is_not_judged_by_another_languages_list():
    text = "Ia monoaan gallang-gallang, siagang pammentenganna, nakulle natarima ri sikontu pa'rasanganna. " * 2
    assert verdict(text, "mak") == "kept"  # Makassarese: in the profile, no stop words yet
    assert verdict(text, "xyz") == "kept"  # not in the profile: defaults, no stop words


def test_per_language_override_changes_only_that_language():
    data = read_yaml(ROOT / "recipes" / "countries" / "id.yaml")
    for lang in data["languages"]:
        if lang["code"] == "sun":
            lang["quality"] = {"min_words": 40}
    profile = CountryProfile.model_validate(data)
    assert verdict(SUNDANESE, "sun", profile) == "too_few_words"
    assert verdict(SUNDANESE, "ind", profile) != "too_few_words"


@pytest.mark.parametrize("code", ["jav", "sun", "min", "mad", "bug", "bew"])
def test_real_paragraphs_are_kept(shared_data, code):
    """NusaParagraph was written by native speakers: the filters may drop at most 1%."""
    rows = list(csv.DictReader(open(shared_data / "nusa-writes" / f"paragraph-{code}-valid.csv", encoding="utf-8")))
    dropped = [row["text"][:80] for row in rows if verdict(row["text"], code) != "kept"]
    assert len(dropped) <= 0.01 * len(rows), dropped


@pytest.mark.parametrize("folder, code", [("indonesian", "ind"), ("javanese", "jav"), ("sundanese", "sun"),
                                          ("minangkabau", "min"), ("balinese", "ban"), ("banjarese", "bjn"),
                                          ("acehnese", "ace"), ("buginese", "bug"), ("madurese", "mad")])
def test_real_short_texts_are_kept(shared_data, folder, code):
    """NusaX sentences are short reviews and headlines: at most 1.5% may go (all too short)."""
    rows = list(csv.DictReader(open(shared_data / "nusax" / "sentiment" / folder / "train.csv", encoding="utf-8")))
    dropped = [row["text"] for row in rows if verdict(row["text"], code) != "kept"]
    assert len(dropped) <= 0.015 * len(rows), dropped
