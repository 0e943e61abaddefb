"""Export -> local directory registry -> pull: exact adapters back, every tampering refused."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from export_fixtures import load_pulled, make_prep_dir, make_run

from countrytune.errors import UserError
from pipeline.export import export_run, pull, vllm_serve_command
from pipeline.export.compat import check_adapter
from countrytune.artifacts.manifest import parse_manifest, sha256_file
from pipeline.registry.refs import Ref, parse_ref
from pipeline.registry.local import LocalRegistry


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """The slow, shared part: one prep run of the sample corpus."""
    return make_prep_dir(tmp_path_factory.mktemp("export-prep") / "prep")


@pytest.fixture(scope="module")
def tiny_run(prep, tmp_path_factory):
    """A real training run (tiny recipe, 6 steps), shared by the module."""
    return make_run(tmp_path_factory.mktemp("runs") / "run", prep)


@pytest.fixture
def new_run(prep, tmp_path):
    """make_run(overrides=..., stop_after=...) for a run variant of this test."""
    return lambda name="run", **kw: make_run(tmp_path / name, prep, **kw)


@pytest.fixture
def exported(tiny_run, tmp_path):
    """(registry dir, ref) with the shared run pushed as version 1."""
    registry = tmp_path / "registry"
    return registry, export_run(tiny_run.path, str(registry), "1")


def logits_of(package_dir, input_ids):
    with torch.no_grad():
        return load_pulled(package_dir)(input_ids=input_ids).logits


def test_pulled_adapter_gives_the_runs_logits_exactly(tiny_run, exported, tmp_path):
    registry, ref = exported
    assert ref == "id/cpt-lora:1"
    out = pull(ref, str(registry), tmp_path / "pulled")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "manifest.json",
            "base_model/config.json", "base_model/model.safetensors", "base_model/tokenizer.json"} <= set(files)
    assert "tokenizer.json" not in files  # the run kept the base's tokenizer
    # The adapter's bytes are the run's bytes, and stock peft reproduces the run's logits.
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert sha256_file(out / name) == sha256_file(tiny_run.path / "adapter" / name)
    assert torch.equal(logits_of(out, tiny_run.input_ids), tiny_run.logits)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(out / "base_model")(input_ids=tiny_run.input_ids).logits
    assert not torch.allclose(base_logits, tiny_run.logits)  # the adapter really does something


def test_manifest_records_provenance_and_every_file(tiny_run, exported, tmp_path):
    registry, ref = exported
    out = pull(ref, str(registry), tmp_path / "pulled")
    m = parse_manifest((out / "manifest.json").read_bytes(), "test")
    run = json.loads((tiny_run.path / "run.json").read_text())
    assert (m.kind, m.country, m.name, m.version) == ("lora", "id", "cpt-lora", "1")
    assert m.languages == run["languages"] and {"ind", "jav", "sun"} <= set(m.languages)
    assert m.base_model.config_sha256 == run["base_model"]["config_sha256"] and m.base_model.built_tiny
    assert m.recipe_sha256 == run["recipe_sha256"] and m.recipe["lora"]["r"] == 8
    assert m.adapter.r == 8 and m.adapter.target_modules == ["q_proj", "v_proj"]
    assert m.compatibility.vllm_multi_lora and not m.compatibility.problems
    assert m.eval["jav"].perplexity == run["eval"]["jav"]["perplexity"] and m.metrics.steps == 6
    # Lineage: raw inputs (with hashes) -> prep config -> shards -> counts.
    stats = json.loads(Path(run["data"][0]["stats"]).read_text())
    prep = m.data[0].prep
    assert [(i.path, i.sha256) for i in prep.inputs] == [(i["path"], i["sha256"]) for i in stats["inputs"]]
    assert prep.prep_config == stats["config"] and prep.totals == stats["totals"]
    assert len(m.data[0].shards) == len(run["data"][0]["shards"]) > 0
    assert prep.languages["ind"].docs_out == stats["languages"]["ind"]["docs_out"]
    assert set(m.software) == {"training", "export"}
    listed = {f.path: f for f in m.files}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    assert all(listed[p].sha256 == sha256_file(out / p) and listed[p].size == (out / p).stat().st_size
               for p in on_disk)
    card = (out / "README.md").read_text()
    jav = run["eval"]["jav"]
    assert f"| jav | {jav['loss']:.4f} | {jav['perplexity']:.2f} | {jav['tokens']:,} |" in card
    assert "--enable-lora" in card
    assert "PeftModel.from_pretrained" in card and "## Limits" in card
    cmd = vllm_serve_command(out)
    assert cmd == (f"vllm serve {out.resolve()}/base_model --enable-lora --max-lora-rank 8 "
                   f"--lora-modules id-cpt-lora={out.resolve()}")


def test_changed_tokenizer_ships_in_the_package(new_run, tmp_path):
    run = new_run(overrides=("tokenizer.chat_template='{% for m in messages %}{{ m.content }}{% endfor %}'",))
    warnings = []
    ref = export_run(run.path, str(tmp_path / "reg"), "1", log=warnings.append)
    out = pull(ref, str(tmp_path / "reg"), tmp_path / "pulled")
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert parse_manifest((out / "manifest.json").read_bytes(), "t").adapter.tokenizer_included
    assert any("base tokenizer" in w for w in warnings)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:100] + bytes([p.read_bytes()[100] ^ 1]) + p.read_bytes()[101:]),
     "does not match its SHA-256"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes() + b"x"), "longer than recorded"),
])
def test_damaged_file_is_refused_by_name(exported, tmp_path, damage, message):
    registry, ref = exported
    damage(registry / "id/cpt-lora/1/adapter_model.safetensors")
    with pytest.raises(UserError, match=message) as e:
        pull(ref, str(registry), tmp_path / "pulled")
    assert "adapter_model.safetensors" in str(e.value)
    assert not (tmp_path / "pulled").exists()
    assert not list(tmp_path.glob(".pulled.partial-*"))  # nothing half-written left behind


@pytest.mark.parametrize("evil", ["../evil", "/tmp/evil", "a/../../evil", "base_model/../../evil", "C:/evil"])
def test_file_names_escaping_the_target_are_refused(exported, tmp_path, evil):
    registry, ref = exported
    path = registry / "id/cpt-lora/1/manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"].append({"path": evil, "sha256": "0" * 64, "size": 1})
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="refusing file name"):
        pull(ref, str(registry), tmp_path / "deep" / "pulled")
    assert not (tmp_path / "deep" / "pulled").exists() and not (tmp_path / "evil").exists()


def test_symlink_in_stored_package_is_refused(exported, tmp_path):
    registry, ref = exported
    (registry / "id/cpt-lora/1/adapter_model.safetensors").unlink()
    (registry / "id/cpt-lora/1/adapter_model.safetensors").symlink_to("/etc/hostname")
    with pytest.raises(UserError, match="symbolic link"):
        pull(ref, str(registry), tmp_path / "pulled")


def test_a_latest_pointer_that_is_a_path_is_refused(exported, tmp_path):
    """`latest` is data read from the registry: `../../outside/pkg` must not be followed, even
    when a complete, self-consistent package sits there (negative control: a real version)."""
    registry, _ = exported
    outside = tmp_path / "outside" / "pkg"
    shutil.copytree(registry / "id/cpt-lora/1", outside)
    (registry / "id/cpt-lora/latest").write_text("../../../outside/pkg\n")
    with pytest.raises(UserError, match="latest pointer holds .* not a version"):
        pull("id/cpt-lora", str(registry), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    (registry / "id/cpt-lora/latest").unlink()
    (registry / "id/cpt-lora/latest").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        pull("id/cpt-lora", str(registry), tmp_path / "b")
    (registry / "id/cpt-lora/latest").unlink()
    (registry / "id/cpt-lora/latest").write_text("1\n")
    pull("id/cpt-lora", str(registry), tmp_path / "c")
    assert (tmp_path / "c" / "manifest.json").is_file()


def test_a_symlinked_version_folder_is_refused(exported, tmp_path):
    registry, _ = exported
    shutil.copytree(registry / "id/cpt-lora/1", tmp_path / "planted")
    (registry / "id/cpt-lora/2").symlink_to(tmp_path / "planted", target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


def test_unlisted_and_missing_files_are_refused(exported, tmp_path):
    registry, ref = exported
    (registry / "id/cpt-lora/1/extra.bin").write_bytes(b"payload")
    with pytest.raises(UserError, match="'extra.bin' is stored but not in the manifest"):
        pull(ref, str(registry), tmp_path / "a")
    (registry / "id/cpt-lora/1/extra.bin").unlink()
    (registry / "id/cpt-lora/1/README.md").unlink()
    with pytest.raises(UserError, match="'README.md' is in the manifest but not"):
        pull(ref, str(registry), tmp_path / "b")


def test_duplicate_version_is_refused_and_latest_moves(tiny_run, exported, tmp_path):
    registry, _ = exported
    with pytest.raises(UserError, match="already exists.*immutable"):
        export_run(tiny_run.path, str(registry), "1")
    reg = LocalRegistry(registry)
    assert reg.latest_version(Ref("id", "cpt-lora")) == "1"
    export_run(tiny_run.path, str(registry), "2")
    assert reg.latest_version(Ref("id", "cpt-lora")) == "2"
    assert reg.resolve(parse_ref("id")) == Ref("id", "cpt-lora", "2")
    out = pull("id/cpt-lora", str(registry), tmp_path / "latest")
    assert parse_manifest((out / "manifest.json").read_bytes(), "t").version == "2"
    with pytest.raises(UserError, match="no such version"):
        pull("id/cpt-lora:3", str(registry), tmp_path / "none")
    with pytest.raises(UserError, match="reserved"):
        export_run(tiny_run.path, str(registry), "latest")


def test_concurrent_pushes_of_one_version_leave_one_whole_entry(exported, tmp_path):
    registry, _ = exported
    source = registry / "id/cpt-lora/1"
    reg, results = LocalRegistry(registry), []

    def push():
        try:
            reg.push(source, Ref("id", "cpt-lora", "9"))
            results.append("ok")
        except UserError as e:
            results.append(str(e))

    threads = [threading.Thread(target=push) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and all("immutable" in r for r in results if r != "ok")
    assert not list((registry / "id/cpt-lora").glob(".incoming-*"))
    nine = Ref("id", "cpt-lora", "9")
    assert reg.stored_files(nine) == reg.stored_files(Ref("id", "cpt-lora", "1"))  # whole
    # A copy of version 1 stored as 9 is a relabelled entry: pull says so rather than serve it.
    with pytest.raises(UserError, match="relabelled"):
        pull(nine, str(registry), tmp_path / "nine")


def test_a_push_killed_midway_is_cleaned_up_by_the_next_one(exported):
    import fcntl

    registry, _ = exported
    package = registry / "id/cpt-lora"
    dead = package / ".incoming-7-deadbeef"  # a push killed mid-copy: its lock is free
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "half.safetensors").write_bytes(b"\0" * 10)
    orphan = package / ".incoming-9-feedface.lock"  # a push killed before its copy began
    orphan.write_text("")
    stale_pointer = package / ".latest-0badf00d"  # a pointer move killed before its rename
    stale_pointer.write_text("7\n")
    os.utime(stale_pointer, (time.time() - 3600, time.time() - 3600))
    live = package / ".incoming-8-0a0a0a0a"  # a push still copying: it holds its lock
    live.mkdir()
    with (package / ".incoming-8-0a0a0a0a.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        LocalRegistry(registry).push(package / "1", Ref("id", "cpt-lora", "10"))
        assert not dead.exists() and live.exists()
        assert not orphan.exists() and not stale_pointer.exists()
        assert (package / ".incoming-8-0a0a0a0a.lock").exists()
    assert LocalRegistry(registry).latest_version(Ref("id", "cpt-lora")) == "10"


def test_unfinished_run_is_refused(new_run, tmp_path):
    run = new_run(stop_after=2)  # checkpointed, not finished
    with pytest.raises(UserError, match="not finished.*DONE"):
        export_run(run.path, str(tmp_path / "reg"), "1")
    assert not (tmp_path / "reg" / "id").exists()


def test_edited_recipe_is_refused(new_run, tmp_path):
    run = new_run()
    recipe = (run.path / "recipe.yaml").read_text()
    (run.path / "recipe.yaml").write_text(recipe.replace("r: 8", "r: 16", 1))  # still a valid recipe
    with pytest.raises(UserError, match="edited after training"):
        export_run(run.path, str(tmp_path / "reg"), "1")


def test_incompatible_adapter_is_refused_with_the_reason(new_run, tmp_path):
    run = new_run()
    config = json.loads((run.path / "adapter" / "adapter_config.json").read_text())
    config["modules_to_save"] = ["lm_head"]  # what a recipe training the output head would save
    (run.path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="modules_to_save") as e:
        export_run(run.path, str(tmp_path / "reg"), "1")
    assert "--allow-incompatible" in str(e.value)
    assert not (tmp_path / "reg" / "id").exists()
    ref = export_run(run.path, str(tmp_path / "reg"), "1", allow_incompatible=True, log=lambda _: None)
    out = pull(ref, str(tmp_path / "reg"), tmp_path / "pulled")
    m = parse_manifest((out / "manifest.json").read_bytes(), "t")
    assert not m.compatibility.vllm_multi_lora and "modules_to_save" in m.compatibility.problems[0]
    assert "Exported despite vLLM incompatibilities" in (out / "README.md").read_text()


@pytest.mark.parametrize("edit, reason", [
    ({"use_dora": True}, "use_dora"),
    ({"bias": "all"}, "bias is 'all'"),
    ({"r": 1024}, "above 512, the largest --max-lora-rank"),
    ({"r": 100}, "serve with --max-lora-rank 128"),
    ({"target_modules": ["q_proj", "conv1d"]}, "not projections vLLM knows"),
    ({"lora_alpha": None}, "no lora_alpha"),
    ({"trainable_token_indices": [5]}, "trainable_token_indices"),
])
def test_each_vllm_refusal_is_reported(tiny_run, tmp_path, edit, reason):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run.path / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    result = check_adapter(adapter)
    assert not result.vllm_multi_lora and any(reason in p for p in result.problems), result.problems


@pytest.mark.parametrize("r, server_rank", [(4, 8), (24, 32), (64, 64)])
def test_any_rank_up_to_the_servers_is_servable_and_the_card_says_which(tiny_run, tmp_path, r, server_rank):
    # vLLM's allowed list constrains the server's --max-lora-rank, not the adapter's r.
    from pipeline.export.model_card import serving_rank

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run.path / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": r}))
    assert check_adapter(adapter).vllm_multi_lora
    assert serving_rank(r) == server_rank


def test_extra_tensors_and_new_tokens_are_reported(tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run.path / "adapter", adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["base_model.model.model.embed_tokens.trainable_tokens_delta"] = torch.zeros(2, 64)
    save_file(tensors, adapter / "adapter_model.safetensors")
    result = check_adapter(adapter, tokenizer_dir=tiny_run.path / "tokenizer", base_vocab=100)
    problems = " | ".join(result.problems)
    assert "trainable_tokens_delta" in problems and "new tokens" in problems
    vocab = json.loads((tiny_run.path / "base_model" / "config.json").read_text())["vocab_size"]
    assert check_adapter(tiny_run.path / "adapter", max_lora_rank=8, tokenizer_dir=tiny_run.path / "tokenizer",
                         base_vocab=vocab).vllm_multi_lora
    with pytest.raises(UserError, match="accepts only"):
        check_adapter(tiny_run.path / "adapter", max_lora_rank=48)


def test_merged_export_is_its_own_package(tiny_run, tmp_path):
    registry = str(tmp_path / "reg")
    ref = export_run(tiny_run.path, registry, "1", merged=True, max_shard_size="200KB", log=lambda _: None)
    assert LocalRegistry(registry).exists(Ref("id", "cpt-lora-merged", "1"))
    out = pull("id/cpt-lora-merged:1", registry, tmp_path / "merged")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    assert (out / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(out)(input_ids=tiny_run.input_ids).logits
    # Merging folds B@A*scale into W: the same sum in another order, so fp32 rounding only.
    torch.testing.assert_close(logits, tiny_run.logits, atol=1e-5, rtol=1e-5)
    assert vllm_serve_command(out) == f"vllm serve {out.resolve()}"
    assert pull(ref, registry, tmp_path / "lora").is_dir()


def test_cli_export_list_show_pull(tiny_run, tmp_path, capsys):
    from pipeline.export.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    registry = str(tmp_path / "reg")

    def cli(*argv):
        args = parser.parse_args(list(argv))
        assert args.run(args) == 0
        return capsys.readouterr().out

    assert cli("export", str(tiny_run.path), "--registry", registry, "--version", "1.0",
               "--name", "cpt-demo").strip() == "id/cpt-demo:1.0"
    listing = cli("list", "--registry", f"file://{registry}", "id")
    assert "id/cpt-demo" in listing and "1.0" in listing
    shown = cli("show", "id/cpt-demo", "--registry", registry)
    jav = json.loads((tiny_run.path / "run.json").read_text())["eval"]["jav"]
    assert "id/cpt-demo:1.0" in shown and f"{jav['perplexity']:.2f}" in shown
    assert "vLLM multi-LoRA: ok" in shown
    assert json.loads(cli("show", "id/cpt-demo:1.0", "--registry", registry, "--json"))["version"] == "1.0"
    pulled = cli("pull", "id/cpt-demo:1.0", "--registry", registry, "--to", str(tmp_path / "p"))
    assert "verified" in pulled and "vllm serve" in pulled
    with pytest.raises(UserError, match="not empty"):
        cli("pull", "id/cpt-demo:1.0", "--registry", registry, "--to", str(tmp_path / "p"))
    with pytest.raises(SystemExit):  # argparse: only vLLM's ranks
        parser.parse_args(["export", "x", "--version", "1", "--max-lora-rank", "48"])


def test_full_path_target_modules_are_compared_by_leaf_name(tiny_run, tmp_path):
    # The trainer resolves `all-linear` to full paths (model.layers.0.mlp.up_proj): peft
    # matches them as suffixes and vLLM checks leaf names, so they are compatible.
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run.path / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert check_adapter(adapter).vllm_multi_lora
