"""The multi-task adapter's shipped suite (recipes/id/heldout-multitask.yaml): `countrytune eval`
loads it, it names every direction the recipe trains, in the recipe's wording, and none of its
files is training data."""

from __future__ import annotations

import json

from countrytune.profiles import load_profile
from countrytune.schema import read_yaml, validate
from data_prep.instructions import InstructionSet
from pipeline.scoring.heldout import prepare
from pipeline.scoring.suite import BITS_PER_BYTE, load_suite
from tests.conftest import ROOT

SUITE = ROOT / "recipes" / "id" / "heldout-multitask.yaml"
TRAINING = ROOT / "recipes" / "id" / "sft-data-multitask.yaml"
REGIONAL = ("jav", "sun", "min", "ban", "bug", "mad", "ace", "bjn", "bbc", "nij")
DIRECTIONS = {f"ind-{x}" for x in (*REGIONAL, "eng")} | {f"{x}-ind" for x in (*REGIONAL, "eng")}


def _training() -> InstructionSet:
    return validate(InstructionSet, read_yaml(TRAINING), str(TRAINING))


def _template(task: str, template: str):
    return next(t for k in _training().tasks if k.name == task for t in k.templates if t.id == template)


def test_the_suite_names_every_direction_in_the_training_wording():
    suite = load_suite(SUITE)
    mt = suite.translation["nusax_mt"]
    assert set(mt.directions) == DIRECTIONS and len(DIRECTIONS) == 22
    # the recipe's directions, written <source>-<target>
    trained = next(k for k in _training().tasks if k.name == "translation")
    assert {f"{s}-{t}" for s, t in trained.directions} == DIRECTIONS
    # en_translate, with the profile's English names (what sft-data renders an English template with)
    assert mt.chat and mt.prompt == _template("translation", "en_translate").user
    english = {lang.code: lang.name for lang in load_profile("id").languages}
    assert mt.language_names == {lang: english[lang] for lang in (*REGIONAL, "ind", "eng")}
    assert mt.max_docs_per_language is not None  # sentences per direction: a setting of the suite
    for name in ("nusax_sentiment_chat", "nusax_sentiment_generate"):
        spec = suite.classification[name]
        assert spec.chat and spec.prompt == _template("sentiment", "en_one_word").user
        assert set(spec.files) == {*REGIONAL, "ind", "eng"}
    assert set(suite.text) == {"eng", "ind"}
    # each direction reads its source and target language's file
    folders = {"ind": "indonesian", "eng": "english", "jav": "javanese", "sun": "sundanese",
               "min": "minangkabau", "ban": "balinese", "bug": "buginese", "mad": "madurese",
               "ace": "acehnese", "bjn": "banjarese", "bbc": "toba_batak", "nij": "ngaju"}
    for direction, files in mt.directions.items():
        source, _, target = direction.partition("-")
        assert files.source == [f"../shared/data/nusax/sentiment/{folders[source]}/valid.csv"]
        assert files.reference == [f"../shared/data/nusax/sentiment/{folders[target]}/valid.csv"]


def test_no_file_of_the_suite_is_training_data(shared_data, monkeypatch):
    monkeypatch.chdir(ROOT)
    suite = load_suite(SUITE)
    assert all(p.is_file() for p in suite.files())
    scored = {p.resolve() for p in suite.files()}
    trained = {(ROOT / p).resolve() for task in _training().tasks for s in task.sources
               for files in s.files.values() for p in files}
    assert trained and not scored & trained


def test_eval_prepares_every_set_of_the_suite(shared_data, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    sets = prepare(load_suite(SUITE), tmp_path, max_docs=2, log=lambda m: None)
    got = {(s.task, s.lang) for s in sets}
    assert {d for t, d in got if t == "nusax_mt"} == DIRECTIONS
    assert {lang for t, lang in got if t == BITS_PER_BYTE} == {"eng", "ind"}
    assert {lang for t, lang in got if t == "nusax_sentiment_generate"} == {*REGIONAL, "ind", "eng"}
    assert all(s.docs == 2 and not s.rejected for s in sets)
    row = json.loads((tmp_path / "heldout" / "nusax_mt_ind-bbc.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert row["query"] == f"Translate this Indonesian sentence into Toba Batak.\n\n{row['source']}"
    assert {s.target for s in sets if s.task == "nusax_mt"} == {*REGIONAL, "ind", "eng"}
