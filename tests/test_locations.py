"""The country profile's allowed storage locations, enforced with one rule and one message for
every writer: prep output, training run folder (checkpoints and trackers inside it), a wandb
server, export registries and pull targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from countrytune_cli import main
from countrytune.errors import UserError
from countrytune.locations import check_location, location_allowed



def test_the_rule(tmp_path):
    allowed_dir = tmp_path / "allowed"
    allowed_dir.mkdir()
    (tmp_path / "escape").symlink_to(tmp_path / "elsewhere")
    (allowed_dir / "link-out").symlink_to(tmp_path / "elsewhere")
    only = [f"file://{allowed_dir}", "s3://id-national-ai/", "oci://registry.id.example/"]
    assert location_allowed(str(allowed_dir / "run"), only)
    assert location_allowed(f"file://{allowed_dir}/deep/run", only)
    assert not location_allowed(str(tmp_path / "run"), only)
    assert not location_allowed(str(allowed_dir / "link-out" / "run"), only)  # a symlink out is out
    assert not location_allowed(str(allowed_dir) + "-sibling", only)  # a prefix is a folder, not a string
    assert location_allowed("s3://id-national-ai/prep", only)
    assert not location_allowed("s3://id-national-ai-mirror/prep", only + ["local"]) or False
    assert not location_allowed("s3://elsewhere/prep", only)
    assert location_allowed("oci://registry.id.example/countrytune", only)
    assert not location_allowed("oci://127.0.0.1:5000/ns", only)  # loopback is local, and local is not listed
    assert location_allowed("oci://127.0.0.1:5000/ns", ["local"])
    assert not location_allowed("oci://registry.example.com/ns", ["local"])
    assert not location_allowed("https://api.wandb.ai", ["local", "s3://id-national-ai/"])
    assert location_allowed(str(tmp_path / "anything"), ["local"])


@pytest.mark.parametrize("location,allowed", [
    # Issue 24: prefixes used to be matched as strings.
    ("https://wandb.id.example.evil.test", False),
    ("https://wandb.id.example@evil.test", False),
    ("https://user:pw@wandb.id.example/", False),
    ("oci://registry.id.example@127.0.0.1:5999/ns", False),
    ("oci://registry.id.example:5999/ns", False),  # another port
    ("http://wandb.id.example", False),  # another scheme
    ("s3://id-national-ai-mirror/prep", False),
    ("s3://id-national-ai/../elsewhere", False),
    ("oci://registry.id.example.evil.test/countrytune", False),
    ("oci://registry.id.example/countrytune-other", False),  # a segment, not a string prefix
    # what stays allowed
    ("https://wandb.id.example", True),
    ("https://WANDB.id.example/runs", True),
    ("s3://id-national-ai/prep/v1", True),
    ("oci://registry.id.example/countrytune", True),
    ("oci://registry.id.example/countrytune/id", True),
])
def test_remote_prefixes_compare_scheme_host_port_and_path_segments(location, allowed):
    prefixes = ["https://wandb.id.example", "s3://id-national-ai/", "oci://registry.id.example/countrytune"]
    assert location_allowed(location, prefixes + ["local"]) is allowed


def test_a_location_with_userinfo_says_why_it_is_refused():
    from pipeline.registry import open_registry

    with pytest.raises(UserError, match="user name or password before an @"):
        check_location("oci://registry.id.example@127.0.0.1:5999/ns", "id", "export registry")
    with pytest.raises(UserError, match="no user name or password in the URI"):
        open_registry("oci://alice:s3cret@127.0.0.1:5999/ns")


def _profile(tmp_path: Path, allowed: list[str]) -> Path:
    """The id profile with only `allowed` storage, in a recipes folder of its own."""
    from tests.export_fixtures import recipes_with_storage

    return recipes_with_storage(tmp_path, allowed) / "countries" / "id.yaml"


def test_one_message_for_every_writer(tmp_path, sample_prep, train_env, capsys, monkeypatch):
    """Training output, a wandb server, an export registry and a pull target outside the
    profile's list are each refused before anything is written, with the same message."""
    from tests.export_fixtures import make_run

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    _profile(tmp_path, [f"file://{allowed}"])
    monkeypatch.setenv("COUNTRYTUNE_RECIPES", str(tmp_path / "recipes"))  # profile `id` is the locked one

    with pytest.raises(UserError) as refused:
        make_run(tmp_path / "outside" / "run", sample_prep)
    message = str(refused.value)
    assert f"training output {tmp_path / 'outside' / 'run'} is outside the storage locations" in message
    assert "storage.allowed_output_locations" in message and not (tmp_path / "outside").exists()

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # auto would go online, to wandb's cloud
    with pytest.raises(UserError, match="wandb server https://api.wandb.ai .*is outside"):
        make_run(allowed / "run-wandb", sample_prep, overrides=("tracking.trackers=[wandb]",))
    monkeypatch.delenv("WANDB_API_KEY")

    run = make_run(allowed / "run", sample_prep).path
    capsys.readouterr()
    assert main(["export", str(run), "--registry", str(tmp_path / "registry"), "--version", "1"]) == 2
    assert f"export registry {tmp_path / 'registry'} is outside the storage locations" in capsys.readouterr().err
    assert not (tmp_path / "registry").exists()
    assert main(["export", str(run), "--registry", str(allowed / "registry"), "--version", "1"]) == 0
    name = "id/cpt-lora:1"
    assert main(["pull", name, "--registry", str(allowed / "registry"), "--to", str(tmp_path / "pulled")]) == 2
    assert f"pull target {tmp_path / 'pulled'} is outside" in capsys.readouterr().err
    assert main(["pull", name, "--registry", str(allowed / "registry"), "--to", str(allowed / "pulled")]) == 0

    # What left the machine, stated in the package: nothing from prep or training, the package
    # itself to the registry it was exported to.
    import json

    manifest = json.loads((allowed / "pulled" / "manifest.json").read_text())
    assert manifest["egress"] == [f"prep of {sample_prep}: nothing", "training: nothing",
                                  f"export: this package, to the registry {allowed / 'registry'}"]
    card = (allowed / "pulled" / "README.md").read_text()
    assert "## What left the machine\n\n- prep of" in card and "- training: nothing" in card
    assert "## What left the machine\n\nNothing" in (sample_prep / "DATA_CARD.md").read_text()


def test_egress_lines_name_each_flow(monkeypatch):
    from data_prep.config import PrepConfig
    from data_prep.datacard import egress as prep_egress
    from countrytune.artifacts.recipe import TrackingSpec
    from pipeline.training.tracking import egress as training_egress

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb = TrackingSpec(trackers=["wandb"], wandb={"base_url": "https://wandb.id.example"})
    assert training_egress(wandb) == []  # no key: offline, files in the run folder
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert training_egress(wandb) == ["wandb: the resolved recipe and training metrics (loss, learning "
                                      "rate, tokens/s, per-language eval loss) to https://wandb.id.example"]
    assert training_egress(TrackingSpec(trackers=["wandb"], wandb={"mode": "offline"})) == []
    assert training_egress(TrackingSpec(trackers=["tensorboard"])) == []
    cfg = lambda **kw: PrepConfig(inputs=["x.jsonl"], output="out", country="id", **kw)  # noqa: E731
    assert prep_egress(cfg()) == prep_egress(cfg(executor="ray")) == []
    assert prep_egress(cfg(executor="ray", ray_address="127.0.0.1:6379")) == []
    assert prep_egress(cfg(executor="ray", ray_address="ray://10.0.0.5:10001")) == [
        "documents (raw and cleaned text) and the prep config to the Ray cluster at ray://10.0.0.5:10001"]


def test_prep_output_goes_through_the_same_rule(tmp_path):
    from data_prep.runner import check_output_allowed
    from countrytune.profiles import load_profile

    profile = load_profile(str(_profile(tmp_path, ["s3://id-national-ai/"])))
    with pytest.raises(UserError, match=r"prep output .* is outside the storage locations"):
        check_output_allowed(str(tmp_path / "out"), profile)
    with pytest.raises(UserError, match="prep writes to local paths only"):
        check_output_allowed("s3://id-national-ai/prep", profile)
    check_location(os.fspath(tmp_path), load_profile("id"), "anything")  # id allows local
