"""Tokenizer fertility: the numbers are what the definitions say, real packaged tokenizers load
offline with their known ids, and `countrytune tokenizer report` prints the table."""

from __future__ import annotations

from importlib import metadata

import pytest

from countrytune.profiles import load_profile
from countrytune_cli import main
from pipeline.vocabulary.fertility import measure
from pipeline.vocabulary.sources import TextTokenizer, load_text_tokenizer
from tests.conftest import ROOT


def _chars() -> TextTokenizer:
    return TextTokenizer("chars", 256, lambda text: list(text.encode("utf-8")))


def test_fertility_counts_follow_their_definitions():
    f = measure(_chars(), "jav", ["ab cdef", "g"])
    assert (f.docs, f.words, f.bytes, f.tokens) == (2, 3, 8, 8)
    assert f.tokens_per_word == pytest.approx(8 / 3) and f.bytes_per_token == 1.0
    # pieces of a word inside a sentence: the space before it and its letters (" ab" = 3)
    assert f.split_words == 2  # " ab" and " cdef"; " g" is 2 pieces


def _installed(package: str) -> bool:
    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("name, package, ids", [
    ("llama3", "llama-models", [9906, 1917]),      # Llama 3's published ids for "Hello world"
    ("mistral-v1", "mistral-common", [22557, 1526]),
])
def test_packaged_tokenizers_load_offline_with_their_real_ids(name, package, ids):
    if not _installed(package):
        pytest.skip(f"{package} not installed (make install adds it with --no-deps)")
    assert load_text_tokenizer(name).encode("Hello world") == ids


def test_report_prints_a_row_per_language_and_tokenizer(shared_data, monkeypatch, capsys, tmp_path):
    import json

    monkeypatch.chdir(ROOT)
    wanted = ["models/smollm2-135m"] if (ROOT / "models" / "smollm2-135m" / "tokenizer.json").is_file() else []
    wanted += [n for n, p in (("llama3", "llama-models"), ("tekken", "mistral-common")) if _installed(p)]
    if not wanted:
        pytest.skip("no real tokenizer here (make install, make demo)")
    args = ["tokenizer", "report", "--country", "id", "--languages", "eng,jav", "--json", str(tmp_path / "f.json")]
    for w in wanted:
        args += ["--tokenizer", w]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tokens/word" in out and "jav" in out
    numbers = json.loads((tmp_path / "f.json").read_text())
    for by_lang in numbers.values():
        # NusaX is parallel: Javanese takes more tokens than the same sentences in English
        assert by_lang["jav"]["tokens"] > by_lang["eng"]["tokens"]
        assert by_lang["jav"]["docs"] == 100


def test_unknown_tokenizers_say_what_exists():
    from countrytune.errors import UserError

    with pytest.raises(UserError, match="packaged tokenizers"):
        load_text_tokenizer("gpt-99")


# "I eat fried rice at the restaurant": five words to PyThaiNLP's newmm, no space in it.
THAI = "ผมกินข้าวผัดที่ร้านอาหาร"
THAI_WORDS = ["ผม", "กิน", "ข้าวผัด", "ที่", "ร้านอาหาร"]


def _codepoints() -> TextTokenizer:
    return TextTokenizer("chars", 0x110000, lambda text: [ord(c) for c in text])


def test_thai_fertility_counts_the_profiles_words_not_white_space():
    words = load_profile("th").words_of("tha")
    assert words(THAI) == THAI_WORDS
    f = measure(_codepoints(), "tha", [THAI, THAI], words)
    assert (f.words, f.tokens) == (10, 2 * len(THAI))
    assert f.tokens_per_word == pytest.approx(len(THAI) / 5)
    # str.split, as the report counted before: the whole sentence is one "word"
    assert measure(_codepoints(), "tha", [THAI], load_profile("th").words_of("eng")).words == 1


def test_a_glued_word_is_measured_after_the_word_before_it():
    from pipeline.vocabulary.fertility import in_context

    assert list(in_context(THAI, THAI_WORDS)) == [(None, "ผม"), ("ผม", "กิน"), ("กิน", "ข้าวผัด"),
                                                   ("ข้าวผัด", "ที่"), ("ที่", "ร้านอาหาร")]
    # after white space (or the start) as before; punctuation between goes with the context
    assert list(in_context("ab “cd”ef", ["ab", "cd", "ef"])) == [(None, "ab"), ("ab “", "cd"), ("cd”", "ef")]
    # one piece per character: a spaced word adds its space too, a glued word only itself:
    # " ผม" 3 and " กิน" 4 pieces are split, the glued "ผม" (2) is not
    f = measure(_codepoints(), "tha", ["ผม กินผม"], load_profile("th").words_of("tha"))
    assert (f.words, f.split_words) == (3, 2)
