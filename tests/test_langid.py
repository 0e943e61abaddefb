"""Language ID: the shipped Indonesian model separates regional languages; the stage tags,
drops foreign text with a reason, and records the second language of mixed documents."""

from __future__ import annotations

import numpy as np
import pytest

from countrytune.errors import UserError
from countrytune.profiles import CountryProfile, load_profile
from countrytune.schema import read_yaml, validate
from countrytune.document import Document, Drop
from data_prep.langid import LanguageId, segments
from data_prep.langid_model import FeatureSpec, LangIdModel, batch_features
from data_prep.langid_train import LabelCheck, LangIdTrainConfig, check_labels, evaluate, read_labelled, train
from tests.conftest import ROOT

JAVANESE = ("Simbah isih kuwat mlaku menyang sawah saben esuk senajan umure wis pitung puluh taun. "
            "Bocah-bocah sinau njoged ing sanggar saben sore sawise mulih sekolah.")
INDONESIAN = ("Pemerintah desa mengadakan kerja bakti untuk membersihkan saluran air sebelum musim "
              "hujan tiba. Perpustakaan kota sekarang buka sampai malam sehingga mahasiswa bisa belajar.")
ENGLISH = "The village library is now open until late at night, so students can study for longer."


@pytest.fixture(scope="module")
def stage():
    return LanguageId(load_profile("id"))


def run(stage, text):
    return stage.process_batch([Document(id="x", text=text, source="s", lang="ind")])[0]


def test_features_never_cross_documents():
    spec = FeatureSpec(ngram_max=4, bits=12)
    bucket, first = batch_features(["ab", "cd", "", "abcd"], spec)
    alone = [batch_features([t], spec)[0] for t in ["ab", "cd", "", "abcd"]]
    ends = list(first[1:]) + [len(bucket)]
    assert [sorted(bucket[s:e]) for s, e in zip(first, ends)] == [sorted(a) for a in alone]


def test_train_save_load_round_trip(tmp_path):
    texts = [JAVANESE, INDONESIAN, ENGLISH] * 3
    labels = ["jav", "ind", "eng"] * 3
    model = LangIdModel.train(texts, labels, FeatureSpec(bits=14), meta={"sources": ["tests"]})
    model.save(tmp_path / "m.npz")
    loaded = LangIdModel.load(tmp_path / "m.npz")
    assert loaded.labels == ["eng", "ind", "jav"] and loaded.meta["sources"] == ["tests"]
    assert [lab for lab, _ in loaded.predict([ENGLISH, JAVANESE])] == ["eng", "jav"]
    assert np.allclose(loaded.scores(texts), model.scores(texts), atol=1e-3)
    # a document scores the same alone and inside a batch
    assert np.allclose(model.scores([JAVANESE]), model.scores([ENGLISH, JAVANESE])[1:], atol=1e-6)


NUSAX_LANGUAGES = {"ace": "acehnese", "ban": "balinese", "bjn": "banjarese", "bug": "buginese",
                   "eng": "english", "ind": "indonesian", "jav": "javanese", "mad": "madurese",
                   "min": "minangkabau", "nij": "ngaju", "sun": "sundanese", "bbc": "toba_batak"}


def test_shipped_model_meets_the_bar_on_all_twelve_nusax_languages(shared_data, monkeypatch):
    """Issue 28, item 4: macro-F1 >= 0.985 over NusaX valid's twelve languages, none below 0.96."""
    monkeypatch.chdir(ROOT)
    cfg = validate(LangIdTrainConfig, read_yaml(ROOT / "recipes" / "id" / "langid.yaml"), "langid.yaml")
    valid = {lang: [str(shared_data / "nusax" / "sentiment" / folder / "valid.csv")]
             for lang, folder in NUSAX_LANGUAGES.items()}
    resolved = lambda files: {lang: [(ROOT / f).resolve() for f in fs] for lang, fs in files.items()}  # noqa: E731
    assert resolved(cfg.eval) == resolved(valid)  # `countrytune langid eval` reports the same twelve
    model = LangIdModel.load(ROOT / cfg.output)
    metrics = evaluate(model, *read_labelled(valid, cfg.reader))
    assert set(metrics["per_language"]) == set(NUSAX_LANGUAGES)
    assert metrics["macro_f1"] >= 0.985, metrics
    assert all(m["f1"] >= 0.96 for m in metrics["per_language"].values()), metrics
    assert any("NusaX" in s and "CC BY-SA" in s for s in model.meta["sources"])


def test_shipped_model_is_what_the_recipe_trains(shared_data, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    data = read_yaml(ROOT / "recipes" / "id" / "langid.yaml")
    shipped = LangIdModel.load(ROOT / data["output"])
    data["output"] = str(tmp_path / "retrained.npz")
    retrained, _ = train(validate(LangIdTrainConfig, data, "langid.yaml"))
    assert retrained.labels == shipped.labels
    assert np.array_equal(retrained.log_prob.astype(np.float16), shipped.log_prob.astype(np.float16))


def test_label_check_moves_only_segments_a_held_out_model_puts_in_an_into_language():
    sun = ("Abdi resep pisan ka kadaharan di dieu, rasana raos tur hargana mirah. "
           "Palayanana oge sae pisan, abdi bakal uih deui ka dieu sareng kulawarga.")
    texts = [INDONESIAN, JAVANESE, JAVANESE, sun, f"{JAVANESE}\n{INDONESIAN}"] * 2
    labels = ["ind", "jav", "jav", "sun", "jav"] * 2
    checked = [False, False, False, False, True] * 2
    check = LabelCheck(files=["x"], into=["ind"], segment_chars=100, folds=2)
    pieces, corrected, moved = check_labels(texts, labels, checked, check, FeatureSpec(bits=14), 0.1)
    # each checked document is cut in two: its Indonesian paragraph moves, its Javanese one stays
    assert len(pieces) == len(texts) + 2 and moved == {"jav->ind": 2}
    assert [lab for piece, lab in zip(pieces, corrected) if piece.startswith("Pemerintah")] == ["ind"] * 4
    negative = LabelCheck(files=["x"], into=["sun"], segment_chars=100, folds=2)  # not where they belong
    assert check_labels(texts, labels, checked, negative, FeatureSpec(bits=14), 0.1)[2] == {}


def test_stage_tags_regional_languages(stage):
    doc = run(stage, JAVANESE)
    assert (doc.lang, doc.lang_second) == ("jav", None) and doc.lang_score > 0.9
    assert run(stage, INDONESIAN).lang == "ind"


def test_foreign_and_letterless_text_is_rejected_with_reason(stage):
    drop = run(stage, ENGLISH)
    assert isinstance(drop, Drop) and (drop.reason, drop.lang) == ("lang_not_kept", "eng")
    drop = run(stage, "### 123 $$$ 456 !!! 789")
    assert isinstance(drop, Drop) and drop.reason == "lang_low_score"


def test_mixed_document_takes_the_majority_and_records_the_second(stage):
    doc = run(stage, f"{JAVANESE}\n{JAVANESE}\n{INDONESIAN}")
    assert (doc.lang, doc.lang_second) == ("jav", "ind")
    doc = run(stage, f"{INDONESIAN}\n{INDONESIAN}\n{JAVANESE}")
    assert (doc.lang, doc.lang_second) == ("ind", "jav")


def test_segments_cover_the_text():
    text = "Satu dua tiga. " * 40
    pieces = segments(text, 200, 5000)
    assert all(len(p) >= 100 for p in pieces) and len(" ".join(pieces).split()) == len(text.split())
    assert len(" ".join(segments(text, 200, 300))) <= 310


def test_model_labels_must_be_profile_languages():
    data = read_yaml(ROOT / "recipes" / "countries" / "id.yaml")
    data["languages"] = [lang for lang in data["languages"] if lang["code"] != "mak"]
    with pytest.raises(UserError, match=r"\['mak'\] are not languages"):
        LanguageId(CountryProfile.model_validate(data))


def test_profile_without_langid_skips_the_stage_by_default(run_prep, tmp_path):
    corpus = tmp_path / "ms.jsonl"
    corpus.write_text('{"text": "Kerajaan negeri akan membina lebih banyak sekolah di kawasan luar bandar '
                      'untuk kanak-kanak yang tinggal jauh dari bandar."}\n')
    stats, _ = run_prep([corpus], country="my")
    assert "langid" not in stats["stages_run"] and stats["totals"]["docs_out"] == 1
    with pytest.raises(UserError, match="has no `langid` section"):
        run_prep([corpus], country="my", stages=["langid"], output=tmp_path / "o2")
