"""Signed packages: a manifest hash proves nothing once someone rewrites a file and its hash
together; an ed25519 signature over the manifest does. Export signs, `pull --require-signature`
refuses unsigned, wrongly signed and re-hashed packages."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from export_fixtures import load_pulled, make_prep_dir, make_run

from countrytune_cli import main
from countrytune.errors import UserError
from pipeline.export import export_run, pull
from pipeline.registry.signing import PRIVATE_NAME, PUBLIC_NAME, SIGNATURE_NAME, generate_key


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("signing")
    return make_run(root / "run", make_prep_dir(root / "prep"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return generate_key(root / "programme"), generate_key(root / "someone-else")


def _rehash(registry, ref_dir: str, name: str, content: bytes) -> None:
    """What the probe did: change a file and its manifest entry together."""
    entry_dir = registry / ref_dir
    (entry_dir / name).write_bytes(content)
    manifest = json.loads((entry_dir / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["path"] == name:
            f["sha256"], f["size"] = hashlib.sha256(content).hexdigest(), len(content)
    (entry_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def test_keys_cli_writes_a_private_key_only_its_owner_reads(tmp_path, capsys):
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 0
    assert "key " in capsys.readouterr().out
    assert os.stat(tmp_path / "k" / PRIVATE_NAME).st_mode & 0o777 == 0o600
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 2  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    assert main(["keys", "show", str(tmp_path / "k" / PUBLIC_NAME)]) == 0
    public_id = capsys.readouterr().out
    assert main(["keys", "show", str(tmp_path / "k" / PRIVATE_NAME)]) == 0
    assert capsys.readouterr().out == public_id and len(public_id.strip()) == 16


def test_signed_package_pulls_and_every_forgery_is_refused(tiny_run, keys, tmp_path):
    (private, public), (_, other_public) = keys
    registry = tmp_path / "registry"
    quiet = {"log": lambda _: None}
    export_run(tiny_run.path, str(registry), "1", sign_key=private, **quiet)
    export_run(tiny_run.path, str(registry), "2", **quiet)  # unsigned

    out = pull("id/cpt-lora:1", str(registry), tmp_path / "ok", require_signature=public)
    assert (out / SIGNATURE_NAME).is_file()  # kept for `countrytune verify`
    with torch.no_grad():
        assert torch.equal(load_pulled(out)(input_ids=tiny_run.input_ids).logits, tiny_run.logits)

    with pytest.raises(UserError, match="not signed"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "unsigned", require_signature=public)
    with pytest.raises(UserError, match="not by the required key"):
        pull("id/cpt-lora:1", str(registry), tmp_path / "other", require_signature=other_public)

    # The weights and their hash rewritten together: the hashes agree, so only the signature
    # can tell. Without --require-signature pull accepts it (the gap the issue describes).
    _rehash(registry, "id/cpt-lora/1", "adapter_model.safetensors", b"not the trained weights")
    pull("id/cpt-lora:1", str(registry), tmp_path / "accepted-unsigned-check")
    with pytest.raises(UserError, match="manifest was changed after it was signed"):
        pull("id/cpt-lora:1", str(registry), tmp_path / "forged", require_signature=public)
    for refused in ("unsigned", "other", "forged"):
        assert not (tmp_path / refused).exists()

    # A signature file that is not one, or a signature moved onto another package.
    (registry / "id/cpt-lora/2" / SIGNATURE_NAME).write_bytes((registry / "id/cpt-lora/1" / SIGNATURE_NAME).read_bytes())
    with pytest.raises(UserError, match="manifest was changed after it was signed"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "moved", require_signature=public)
    (registry / "id/cpt-lora/2" / SIGNATURE_NAME).write_bytes(b"{}")
    with pytest.raises(UserError, match="not a countrytune signature"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "junk", require_signature=public)


def test_export_refuses_a_key_that_cannot_sign(tiny_run, keys, tmp_path):
    (_, public), _ = keys
    with pytest.raises(UserError, match="not a readable PEM private key"):
        export_run(tiny_run.path, str(tmp_path / "registry"), "1", sign_key=public, log=lambda _: None)
    assert not (tmp_path / "registry").exists()


def test_latest_moved_back_to_an_older_signed_package_is_refused(tiny_run, keys, tmp_path, capsys):
    # Issue 24: with `latest` moved from 3 back to 2, `pull --require-signature` took the older
    # package. The machine remembers the newest it pulled; explicit versions stay allowed.
    import time

    (private, public), _ = keys
    registry = tmp_path / "registry"
    for i, version in enumerate(("1", "2", "3")):
        if i:
            time.sleep(1.1)  # `created` has one-second resolution
        export_run(tiny_run.path, str(registry), version, sign_key=private, log=lambda _: None)
    common = ["--registry", str(registry), "--require-signature", str(public)]
    assert main(["pull", "id/cpt-lora", *common, "--to", str(tmp_path / "p3")]) == 0
    (registry / "id" / "cpt-lora" / "latest").write_text("2")
    assert main(["pull", "id/cpt-lora", *common, "--to", str(tmp_path / "p-back")]) == 2
    err = capsys.readouterr().err
    assert "latest is version 2" in err and "older than version 3" in err and "moved back" in err
    assert not (tmp_path / "p-back").exists()
    assert main(["pull", "id/cpt-lora:2", *common, "--to", str(tmp_path / "p2")]) == 0  # chosen by name
    assert main(["pull", "id/cpt-lora", *common, "--allow-older", "--to", str(tmp_path / "p-ok")]) == 0
    (registry / "id" / "cpt-lora" / "latest").write_text("3")
    assert main(["pull", "id/cpt-lora", *common, "--to", str(tmp_path / "p3-again")]) == 0
