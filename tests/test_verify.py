"""`countrytune verify`: every link of a package's lineage checked, and each one, broken in turn,
reported as broken (exit 1) while the others still verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from export_fixtures import ROOT, make_base, make_prep_dir, make_run

from countrytune_cli import main
from pipeline.export import export_run, pull
from pipeline.registry.signing import generate_key
from pipeline.export.verify import BROKEN, UNVERIFIABLE, VERIFIED, verify_package

RAW = ROOT / "data_prep" / "sample_corpus" / "corpus"


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """A prep run, a local base, a run on both, a signed export pulled: every artefact on disk."""
    root = tmp_path_factory.mktemp("verify")
    prep = make_prep_dir(root / "prep")
    base, tokenizer = make_base(root / "base")
    run = make_run(root / "run", prep, overrides=(
        "model.tiny=null", f"model.name_or_path={base}", "tokenizer.train_vocab_size=null",
        f"tokenizer.name_or_path={tokenizer}")).path
    private, public = generate_key(root / "keys")
    export_run(run, str(root / "registry"), "1", sign_key=private, log=lambda _: None)
    package = pull("id/cpt-lora:1", str(root / "registry"), root / "package")
    return {"root": root, "prep": prep, "base": base, "public": public, "package": package,
            "registry": root / "registry"}


def _statuses(links) -> dict[str, str]:
    return {link.name: link.status for link in links}


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_every_link_verifies_when_every_artefact_is_here(lineage):
    links = verify_package(lineage["package"], public_key=lineage["public"], base=lineage["base"],
                           input_dirs=[RAW])
    statuses = _statuses(links)
    assert set(statuses.values()) == {VERIFIED}, [link for link in links if link.status != VERIFIED]
    names = list(statuses)
    assert names[:3] == ["signature", "package files", "recipe"]
    assert any(n.startswith("base weights model") for n in names)
    assert any(n.startswith("shard ") for n in names) and any(n.startswith("prep stats") for n in names)
    assert sum(n.startswith("raw input") for n in names) == len(list(RAW.iterdir()))


def test_each_broken_link_is_reported_by_name(lineage, tmp_path):
    pkg = lineage["package"]
    ok = dict(public_key=lineage["public"], base=lineage["base"], input_dirs=[RAW])

    _, other = generate_key(tmp_path / "other")
    assert _statuses(verify_package(pkg, **{**ok, "public_key": other}))["signature"] == BROKEN

    changed = _copy(pkg, tmp_path / "changed-file")
    (changed / "adapter_model.safetensors").write_bytes(b"x")
    statuses = _statuses(verify_package(changed, **ok))
    assert statuses["file adapter_model.safetensors"] == BROKEN and "package files" not in statuses
    assert statuses["recipe"] == VERIFIED  # the other links still judged

    edited = _copy(pkg, tmp_path / "edited-recipe")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["recipe"]["optim"]["lr"] = 0.5
    (edited / "manifest.json").write_text(json.dumps(manifest))
    statuses = _statuses(verify_package(edited, **ok))
    assert statuses["recipe"] == BROKEN and statuses["signature"] == BROKEN

    base = _copy(lineage["base"], tmp_path / "base-copy")
    (base / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes()[:-1] + b"\0")
    assert _statuses(verify_package(pkg, **{**ok, "base": base}))["base weights model.safetensors"] == BROKEN

    # The prep output moved (--data) and one shard and the data card changed there.
    moved = _copy(lineage["prep"], tmp_path / "moved" / lineage["prep"].name)
    aside = lineage["prep"].rename(tmp_path / "aside")
    try:
        statuses = _statuses(verify_package(pkg, **ok))
        assert {s for n, s in statuses.items() if n.startswith(("shard", "prep stats", "data card"))} == {UNVERIFIABLE}
        statuses = _statuses(verify_package(pkg, **ok, data_dirs=[tmp_path / "moved"]))
        assert {s for n, s in statuses.items() if n.startswith(("shard", "prep stats", "data card"))} == {VERIFIED}
        shard = sorted((moved / "data").glob("*.parquet"))[0]
        shard.write_bytes(shard.read_bytes() + b"\0")
        (moved / "DATA_CARD.md").write_text("# rewritten\n")
        statuses = _statuses(verify_package(pkg, **ok, data_dirs=[tmp_path / "moved"]))
        assert statuses[f"shard data/{shard.name}"] == BROKEN
        assert next(s for n, s in statuses.items() if n.startswith("data card")) == BROKEN
    finally:
        aside.rename(lineage["prep"])

    raw = _copy(RAW, tmp_path / "raw")
    first = sorted(raw.iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\n")
    statuses = _statuses(verify_package(pkg, **{**ok, "input_dirs": [raw]}))
    assert [s for n, s in statuses.items() if n.startswith("raw input") and n.endswith(first.name)] == [BROKEN]
    statuses = _statuses(verify_package(pkg, public_key=lineage["public"]))
    assert {s for n, s in statuses.items() if n.startswith("raw input")} == {UNVERIFIABLE}


def test_cli_exit_status_and_refs(lineage, tmp_path, capsys):
    common = ["--public-key", str(lineage["public"]), "--base", str(lineage["base"]), "--inputs", str(RAW)]
    assert main(["verify", "id/cpt-lora:1", "--registry", str(lineage["registry"]), *common]) == 0
    assert "0 broken" in capsys.readouterr().err
    stored = lineage["registry"] / "id/cpt-lora/1/README.md"
    stored.write_text(stored.read_text() + "tampered\n")
    assert main(["verify", "id/cpt-lora:1", "--registry", str(lineage["registry"]), *common]) == 1
    out = capsys.readouterr()
    # Two links break: the file against the manifest, and the signature over every file.
    assert "file README.md" in out.out and "2 broken" in out.err


def test_a_replayed_version_is_a_broken_link(lineage, tmp_path, capsys):
    # Issue 24: a signed version folder copied to a new version number (and `latest` pointed
    # at it) verified with "0 broken", while pull refused it.
    registry = _copy(lineage["registry"], tmp_path / "registry")
    shutil.copytree(registry / "id/cpt-lora/1", registry / "id/cpt-lora/4")
    (registry / "id/cpt-lora/latest").write_text("4")
    common = ["--public-key", str(lineage["public"]), "--registry", str(registry)]
    for ref in ("id/cpt-lora:4", "id/cpt-lora"):
        assert main(["verify", ref, *common]) == 1
        out = capsys.readouterr().out
        assert "identity" in out and "replayed" in out
    main(["verify", "id/cpt-lora:1", *common])  # (another test tampers a file of version 1)
    out = capsys.readouterr().out
    assert "identity" in out and "replayed" not in out


def test_a_manifest_edited_out_of_its_schema_is_a_broken_link_not_an_error(lineage, tmp_path, capsys):
    pkg = _copy(lineage["package"], tmp_path / "bad-schema")
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"] = "everything"
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(pkg), "--public-key", str(lineage["public"])]) == 1
    out = capsys.readouterr()
    assert "manifest" in out.out and "broken" in out.out and "2 broken" in out.err  # and the signature
