"""Bases are registry packages: an imported base is pushed (`countrytune model push`), training
names it `registry://...` and pulls it verified into this machine's cache, the adapter's
manifest names that package and its weight hashes, and `pull --with-base` gives deployment both
folders: stock transformers + peft load them to the trainer's logits, and the printed `vllm
serve` line names only what was pulled."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from countrytune.errors import UserError
from countrytune_cli import main
from tests.export_fixtures import SENTENCES

ROOT = Path(__file__).resolve().parents[1]
BASE_REF = "id/smollm2-135m:1"



@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COUNTRYTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_adapter_on_a_registry_base_is_served_from_pulled_folders_only(smollm2, sample_prep, train_env,
                                                                       cache, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from countrytune.artifacts.recipe import load_recipe
    from pipeline.export.package import export_run
    from pipeline.train import train

    registry = train_env / "registry"
    assert main(["model", "push", str(smollm2), BASE_REF, "--registry", str(registry)]) == 0
    recipe = load_recipe(ROOT / "recipes" / "id" / "smollm2-cpt-lora.yaml", [
        f"model.name_or_path=registry://{BASE_REF}", f"model.registry={registry}",
        f"data.sources=[{{path: {sample_prep}}}]", "data.language_weights=null",
        "data.eval_max_docs_per_language=2", "training.max_steps=2", "training.sequence_length=128",
        "training.micro_batch_size=2", "lora.r=8", "lora.alpha=16", "evaluation.suite=null"])
    run = train_env / "run"
    outcome = train(recipe, run, progress=False)

    record = json.loads((run / "run.json").read_text())["base_model"]
    assert record["package"]["ref"] == BASE_REF and Path(record["name_or_path"]).is_relative_to(cache)
    assert "registry://" in (run / "recipe.yaml").read_text()  # the recipe as written, portable

    ref = export_run(run, str(registry), "0.1.0", log=lambda m: None)
    manifest = json.loads((registry / "id" / "smollm2-cpt-lora" / "0.1.0" / "manifest.json").read_text())
    assert manifest["base_model"]["package"]["ref"] == BASE_REF
    assert manifest["base_model"]["weights_sha256"]["model.safetensors"]

    pulled = train_env / "deploy"
    capsys.readouterr()
    assert main(["pull", ref, "--registry", str(registry), "--to", str(pulled), "--with-base"]) == 0
    out = capsys.readouterr().out
    serve = next(line for line in out.splitlines() if line.startswith("serve: "))
    words = shlex.split(serve.removeprefix("serve: "))
    paths = [w.split("=", 1)[-1] for w in words if "/" in w]
    assert paths and all(Path(p).is_relative_to(pulled.resolve()) for p in paths), serve
    assert str(pulled.resolve() / "base") in words and "--enable-lora" in words

    # Stock loading from the pulled folders only, as a deployment machine would.
    tokenizer = AutoTokenizer.from_pretrained(pulled / "base")
    ids = tokenizer(SENTENCES[1], return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(pulled / "base", dtype=torch.float32)
    stock = PeftModel.from_pretrained(base, pulled / "adapter").eval()
    trained = outcome.model.eval()
    with torch.no_grad():
        assert torch.equal(stock(ids).logits, trained(ids).logits)
        with trained.disable_adapter():  # negative control: the adapter does change the logits
            assert not torch.equal(trained(ids).logits, stock(ids).logits)

    # verify checks the base link by hash; a changed weight file breaks it.
    assert main(["verify", str(pulled / "adapter"), "--base", str(pulled / "base")]) == 0
    capsys.readouterr()
    weights = pulled / "base" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert main(["verify", str(pulled / "adapter"), "--base", str(pulled / "base")]) == 1
    assert "model.safetensors" in capsys.readouterr().out

    # Another registry holding the adapter beside another model under the base's name: refused.
    import shutil

    other, swapped = train_env / "registry-2", train_env / "swapped"
    shutil.copytree(smollm2, swapped)
    (swapped / "model.safetensors").write_bytes(bytes(data))
    assert main(["model", "push", str(swapped), BASE_REF, "--registry", str(other)]) == 0
    shutil.copytree(registry / "id" / "smollm2-cpt-lora", other / "id" / "smollm2-cpt-lora")
    capsys.readouterr()
    assert main(["pull", ref, "--registry", str(other), "--to", str(train_env / "d2"), "--with-base"]) == 2
    assert "not the base" in capsys.readouterr().err and not (train_env / "d2").exists()


def test_a_second_start_reuses_the_cache_and_refuses_a_changed_copy(smollm2, tmp_path, cache):
    from pipeline.registry.bases import cached_path, fetch_base
    from pipeline.registry.refs import parse_ref

    registry = tmp_path / "registry"
    assert main(["model", "push", str(smollm2), BASE_REF, "--registry", str(registry)]) == 0
    folder, package = fetch_base(f"registry://{BASE_REF}", str(registry))
    assert folder == cached_path(str(registry), parse_ref(BASE_REF)) and package.ref == BASE_REF
    again, _ = fetch_base(f"registry://{BASE_REF}", str(registry))  # no second pull
    assert again == folder
    (folder / "config.json").write_text("{}")
    with pytest.raises(UserError, match="config.json.*changed since it was pulled"):
        fetch_base(f"registry://{BASE_REF}", str(registry))


def test_registry_bases_name_a_version_and_must_be_bases(tmp_path, cache, sample_prep):
    from pipeline.registry.bases import fetch_base

    for text in ("registry://id/smollm2-135m", "registry://id/smollm2-135m:latest", "registry://id"):
        with pytest.raises(UserError, match="name the package and its version"):
            fetch_base(text, str(tmp_path / "registry"))
    with pytest.raises(UserError, match="nothing pushed|no such version"):
        fetch_base("registry://id/smollm2-135m:1", str(tmp_path / "registry"))


def test_model_push_refuses_folders_it_cannot_vouch_for(tmp_path, smollm2, capsys):
    import shutil

    registry = str(tmp_path / "registry")
    bare = tmp_path / "bare"
    shutil.copytree(smollm2, bare)
    (bare / "provenance.json").unlink()
    assert main(["model", "push", str(bare), BASE_REF, "--registry", registry]) == 2
    assert "no provenance.json" in capsys.readouterr().err
    assert main(["model", "push", str(tmp_path / "nowhere"), BASE_REF, "--registry", registry]) == 2
    assert main(["model", "push", str(smollm2), "id/smollm2-135m", "--registry", registry]) == 2
    assert "COUNTRY/NAME:VERSION" in capsys.readouterr().err
    assert main(["model", "push", str(smollm2), BASE_REF, "--registry", registry]) == 0
    assert main(["model", "push", str(smollm2), BASE_REF, "--registry", registry]) == 2
    assert "immutable" in capsys.readouterr().err
    pulled = tmp_path / "pulled"
    assert main(["pull", BASE_REF, "--registry", registry, "--to", str(pulled)]) == 0
    assert main(["model", "push", str(pulled), "id/again:1", "--registry", registry]) == 2
    assert "already a registry package" in capsys.readouterr().err


def _tiny_imported_base(root: Path) -> Path:
    """A tiny Llama with its tokenizer and a provenance.json, as `model import` leaves a folder
    (the GGUF it names is made up: this is a test base, not an imported one)."""
    import shutil

    from tests.export_fixtures import make_base, write_import_provenance

    base, tokenizer = make_base(root)
    for path in tokenizer.iterdir():
        shutil.copy2(path, base / path.name)
    write_import_provenance(base, "tiny-llama")
    return base


def test_over_oci_a_signed_base_and_its_adapter_pull_together(tmp_path, cache, capsys):
    """The same chain against the real docker-registry, the base signed: push it, train on
    `registry://` from oci://, export, pull --with-base with the signature required, load."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipeline.registry.signing import generate_key
    from tests.export_fixtures import make_prep_dir, make_run
    from tests.oci_servers import registry

    base = _tiny_imported_base(tmp_path / "made")
    private, public = generate_key(tmp_path / "keys")
    with registry(tmp_path / "oci") as http:
        uri = f"oci://{http.removeprefix('http://')}/countrytune"
        assert main(["model", "push", str(base), "id/tiny-base:1", "--registry", uri,
                     "--sign-key", str(private)]) == 0
        run = make_run(tmp_path / "run", make_prep_dir(tmp_path / "prep"), overrides=(
            "model.tiny=null", "model.name_or_path=registry://id/tiny-base:1", f"model.registry={uri}",
            "tokenizer.train_vocab_size=null"))
        assert main(["export", str(run.path), "--registry", uri, "--version", "1", "--sign-key", str(private)]) == 0
        capsys.readouterr()
        deploy = tmp_path / "deploy"
        assert main(["pull", "id/cpt-lora:1", "--registry", uri, "--to", str(deploy), "--with-base",
                     "--require-signature", str(public)]) == 0
    assert f"vllm serve {deploy.resolve() / 'base'} " in capsys.readouterr().out
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(deploy / "base"),
                                       deploy / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=run.input_ids).logits, run.logits)
