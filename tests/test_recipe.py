"""Training recipes: `extends`, `--set` overrides, and errors that say what to fix."""

import pytest
import yaml

from countrytune.errors import UserError
from countrytune.artifacts.recipe import load_recipe, recipe_sha256, recipe_to_yaml


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"country": "id", "model": {"tiny": {"hidden_size": 64}}, "lora": {"r": 4, "alpha": 8},
        "training": {"max_steps": 10, "sequence_length": 64}}


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    _write(tmp_path / "base.yaml", {**BASE, "tracking": {"trackers": ["wandb", "tensorboard"]}})
    child = _write(tmp_path / "child.yaml", {
        "extends": "base.yaml", "name": "x", "task": "cpt",
        "data": {"sources": [{"path": "somewhere"}]},
        "lora": {"r": 8}, "tracking": {"trackers": ["tensorboard"]}})
    recipe = load_recipe(child)
    assert recipe.lora.r == 8 and recipe.lora.alpha == 8  # merged key by key
    assert recipe.tracking.trackers == ["tensorboard"]  # lists replace
    assert recipe.model.tiny.hidden_size == 64


def test_set_overrides_parse_yaml_values(tmp_path):
    path = _write(tmp_path / "r.yaml", {**BASE, "name": "x", "task": "cpt",
                                        "data": {"sources": [{"path": "p"}]}})
    recipe = load_recipe(path, ["training.max_steps=3", "lora.target_modules=[q_proj, v_proj]",
                                "deepspeed.stage=3", "data.language_weights={ind: 1, jav: 2}"])
    assert recipe.training.max_steps == 3
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.deepspeed.stage == 3
    assert recipe.data.language_weights == {"ind": 1, "jav": 2}
    # The resolved recipe round-trips through YAML unchanged, hash included.
    again = _write(tmp_path / "resolved.yaml", yaml.safe_load(recipe_to_yaml(recipe)))
    assert recipe_sha256(load_recipe(again)) == recipe_sha256(recipe)


@pytest.mark.parametrize("overrides, message", [
    (["training.max_stepz=3"], "training.max_stepz"),
    (["training.max_steps=0"], "training.max_steps"),
    (["model.name_or_path=foo"], "exactly one of model.name_or_path and model.tiny"),
    (["deepspeed={stage: 2, offload_params: true}"], "offload_params needs stage 3"),
    (["lora.r"], "expected key=value"),
])
def test_bad_recipes_say_what_to_fix(tmp_path, overrides, message):
    path = _write(tmp_path / "r.yaml", {**BASE, "name": "x", "task": "cpt",
                                        "data": {"sources": [{"path": "p"}]}})
    with pytest.raises(UserError, match=message):
        load_recipe(path, overrides)


def test_extends_loop_is_an_error(tmp_path):
    _write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    _write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(UserError, match="loops"):
        load_recipe(tmp_path / "a.yaml")


def test_a_recipe_saved_before_a_new_field_existed_keeps_its_hash_and_resumes(tmp_path):
    """Upgrading countrytune between training and export (or resume) must not make a run's
    recipe look edited: a field added since, left at its default, changes neither the hash nor
    the resume check (negative control: a real change does)."""
    from pipeline.training.run_folder import recipe_differences

    path = _write(tmp_path / "r.yaml", {**BASE, "name": "x", "task": "cpt", "data": {"sources": [{"path": "p"}]}})
    recipe = load_recipe(path)
    saved = yaml.safe_load(recipe_to_yaml(recipe))
    del saved["lora"]["train_new_tokens"]  # as written by a version without the field
    old = _write(tmp_path / "old.yaml", saved)
    assert recipe_sha256(load_recipe(old)) == recipe_sha256(recipe)
    assert recipe_differences(old, recipe.model_dump(mode="json")) == []
    changed = recipe.model_copy(update={"lora": recipe.lora.model_copy(update={"r": 8})})
    assert recipe_sha256(changed) != recipe_sha256(recipe)
    assert recipe_differences(old, changed.model_dump(mode="json")) == ["lora.r: 4 -> 8"]


def test_wsd_schedule_warms_up_holds_the_peak_then_decays_to_the_floor():
    import torch

    from pipeline.training.builders import make_scheduler
    from countrytune.artifacts.recipe import OptimSpec

    spec = OptimSpec(lr=1.0, schedule="wsd", warmup_steps=4, decay_fraction=0.25, min_lr_ratio=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=spec.lr)
    sched = make_scheduler(opt, spec, max_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 5) and lrs[3] == pytest.approx(4 / 5)  # warm-up
    assert all(lr == 1.0 for lr in lrs[4:75])                                  # stable at the peak
    assert lrs[75] == 1.0 and lrs[99] == pytest.approx(0.1 + 0.9 * (1 - (24 / 25) ** 0.5))
    assert all(a >= b for a, b in zip(lrs[75:], lrs[76:]))                     # decaying
    assert sched.lr_lambdas[0](100) == pytest.approx(0.1)                      # ends at the floor
