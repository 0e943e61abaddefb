"""Every YAML under recipes/ validates; schema errors say where; profiles drive behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from countrytune.errors import UserError
from countrytune.profiles import CountryProfile, load_profile
from countrytune.schema import read_yaml, validate
from data_prep.config import PrepConfig
from data_prep.langid_train import LangIdTrainConfig
from pipeline.preference.pairs import PairsSpec
from pipeline.scoring.suite import EvalSuite
from data_prep.instructions import InstructionSet
from countrytune.artifacts.recipe import TrainRecipe, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def schema_for(path: Path):
    """Which schema a recipe file is an instance of, by where it lives and its name."""
    if path.parent.name == "countries":
        return CountryProfile
    if path.name.startswith("preference-pairs"):
        return PairsSpec
    if path.name.startswith("prep"):
        return PrepConfig
    if path.name.startswith("langid"):
        return LangIdTrainConfig
    if path.name.startswith("heldout"):
        return EvalSuite
    if path.name.startswith("sft-data"):
        return InstructionSet
    if path.name.endswith("-base.yaml"):
        return "base"  # a partial recipe: validated through every recipe that extends it
    if path.name.startswith(("cpt", "sft", "tiny", "smollm2", "gemma3")):
        return TrainRecipe
    raise AssertionError(f"{path}: no schema claims this file; add one to schema_for()")


ALL_YAML = sorted(RECIPES.rglob("*.yaml"))


def test_recipes_exist():
    assert {p.stem for p in (RECIPES / "countries").glob("*.yaml")} >= {"id", "my"}
    assert len(ALL_YAML) >= 3


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_validates(path):
    schema = schema_for(path)
    if schema == "base":
        children = [p for p in ALL_YAML if read_yaml(p).get("extends") == path.name]
        assert children, f"{path} is a base recipe that nothing extends"
        return
    if schema is TrainRecipe:  # follows `extends`
        instance = load_recipe(path)
        load_profile(instance.country)
        return
    instance = validate(schema, read_yaml(path), str(path))
    if isinstance(instance, CountryProfile):
        assert instance.country == path.stem, "a profile's file name is its country code"
        for lang in instance.languages:
            instance.thresholds_for(lang.code)
    if isinstance(instance, PrepConfig):
        load_profile(instance.country)


def test_indonesia_lists_its_regional_languages():
    profile = load_profile("id")
    codes = {lang.code for lang in profile.languages if lang.keep}
    assert codes >= {"ind", "jav", "sun", "min", "ban", "bjn", "ace", "bug", "mad"}
    for code in ("ind", "jav", "sun", "min", "ban", "bjn", "ace", "bug", "mad"):
        assert profile.language(code).stop_words, f"{code} needs stop words"
    assert {rule.type for rule in profile.pii} >= {"NIK", "NPWP", "PHONE", "EMAIL", "IP", "CARD"}


def test_language_override_applies_to_that_language_only(tmp_path):
    data = read_yaml(RECIPES / "countries" / "id.yaml")
    data["languages"][1]["quality"] = {"min_words": 40}
    profile = CountryProfile.model_validate(data)
    assert profile.thresholds_for(data["languages"][1]["code"]).min_words == 40
    assert profile.thresholds_for("ind").min_words == data["quality"]["min_words"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(main_language="xxx"), "main_language"),
    (lambda d: d["languages"][0].update(quality={"min_wrds": 3}), "unknown quality keys"),
    (lambda d: d["languages"][0].update(code="Indonesian"), "languages.0.code"),
    (lambda d: d["pii"][0].update(pattern="(unclosed"), "does not compile"),
    (lambda d: d.update(colour="red"), "colour"),
])
def test_bad_profile_errors_say_where(tmp_path, mutate, message):
    data = read_yaml(RECIPES / "countries" / "id.yaml")
    mutate(data)
    with pytest.raises(UserError, match=message):
        validate(CountryProfile, data, "test")


def test_unknown_country_lists_known_ones():
    with pytest.raises(UserError, match=r"known: .*id.*my"):
        load_profile("zz")


BENCH_RECIPES = sorted((RECIPES.parent / "bench" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in BENCH_RECIPES if not p.name.endswith("-base.yaml")],
                         ids=lambda p: p.name)
def test_every_benchmark_recipe_validates_and_names_a_shape_that_is_here(path):
    recipe = load_recipe(path)
    assert recipe.model.random_weights
    assert (RECIPES.parent / recipe.model.name_or_path / "config.json").is_file()
