"""Signed packages: a manifest hash proves nothing once someone rewrites a file and its hash
together; a model-signing signature (model.sig) over every file does. Export signs,
`pull --require-signature` refuses unsigned, wrongly signed, re-hashed, added-to and cut
packages, and a package signed by the previous countrytune (ed25519 manifest.sig) still pulls
with its old key."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
import torch
from export_fixtures import load_pulled, make_prep_dir, make_run

from countrytune_cli import main
from countrytune.errors import UserError
from pipeline.export import export_run, pull
from pipeline.export.verify import BROKEN, VERIFIED, signature_link
from pipeline.registry.signing import (
    LEGACY_SIGNATURE_NAME,
    PRIVATE_NAME,
    PUBLIC_NAME,
    SIGNATURE_NAME,
    generate_key,
    load_public_key,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("signing")
    return make_run(root / "run", make_prep_dir(root / "prep"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return generate_key(root / "programme"), generate_key(root / "someone-else")


def _rewrite_manifest(entry_dir, change) -> None:
    manifest = json.loads((entry_dir / "manifest.json").read_text())
    change(manifest)
    (entry_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _rehash(registry, ref_dir: str, name: str, content: bytes) -> None:
    """What the probe did: change (or add) a file and its manifest entry together."""
    entry_dir = registry / ref_dir
    (entry_dir / name).write_bytes(content)

    def change(manifest):
        entry = {"path": name, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
        manifest["files"] = [f for f in manifest["files"] if f["path"] != name] + [entry]
    _rewrite_manifest(entry_dir, change)


def test_keys_cli_writes_a_p256_key_only_its_owner_reads(tmp_path, capsys):
    from cryptography.hazmat.primitives.asymmetric import ec

    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 0
    assert "key " in capsys.readouterr().out
    assert os.stat(tmp_path / "k" / PRIVATE_NAME).st_mode & 0o777 == 0o600
    assert load_public_key(tmp_path / "k" / PUBLIC_NAME).curve.name == "secp256r1"  # model-signing's key signer
    assert isinstance(load_public_key(tmp_path / "k" / PUBLIC_NAME), ec.EllipticCurvePublicKey)
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 2  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    assert main(["keys", "show", str(tmp_path / "k" / PUBLIC_NAME)]) == 0
    public_id = capsys.readouterr().out
    assert main(["keys", "show", str(tmp_path / "k" / PRIVATE_NAME)]) == 0
    assert capsys.readouterr().out == public_id and len(public_id.strip()) == 16


def test_a_passphrase_protected_key_signs_and_needs_its_passphrase(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("COUNTRYTUNE_SIGNING_KEY_PASSPHRASE", "correct horse")
    private, public = generate_key(tmp_path / "k")
    assert b"ENCRYPTED" in private.read_bytes()
    export_run(tiny_run.path, str(tmp_path / "registry"), "1", sign_key=private, log=lambda _: None)
    pull("id/cpt-lora:1", str(tmp_path / "registry"), tmp_path / "ok", require_signature=public)
    monkeypatch.delenv("COUNTRYTUNE_SIGNING_KEY_PASSPHRASE")
    with pytest.raises(UserError, match="COUNTRYTUNE_SIGNING_KEY_PASSPHRASE"):
        export_run(tiny_run.path, str(tmp_path / "registry"), "2", sign_key=private, log=lambda _: None)


def test_signed_package_pulls_and_every_forgery_is_refused(tiny_run, keys, tmp_path):
    (private, public), (_, other_public) = keys
    registry = tmp_path / "registry"
    quiet = {"log": lambda _: None}
    for version in ("1", "3", "4"):
        export_run(tiny_run.path, str(registry), version, sign_key=private, **quiet)
    export_run(tiny_run.path, str(registry), "2", **quiet)  # unsigned

    out = pull("id/cpt-lora:1", str(registry), tmp_path / "ok", require_signature=public)
    assert (out / SIGNATURE_NAME).is_file() and not (out / LEGACY_SIGNATURE_NAME).exists()  # kept for verify
    assert signature_link(out, public).status == VERIFIED
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
    with pytest.raises(UserError, match=r"adapter_model.safetensors, manifest.json changed after signing"):
        pull("id/cpt-lora:1", str(registry), tmp_path / "forged", require_signature=public)

    # The manifest alone edited (its recipe, which no file hash covers).
    _rewrite_manifest(registry / "id/cpt-lora/3", lambda m: m["recipe"]["optim"].update(lr=0.5))
    with pytest.raises(UserError, match=r"not what key \w+ signed: manifest.json changed after signing"):
        pull("id/cpt-lora:3", str(registry), tmp_path / "tampered-manifest", require_signature=public)

    # A file added (listed in the manifest), and a file removed (and dropped from the manifest).
    _rehash(registry, "id/cpt-lora/4", "extra.bin", b"smuggled")
    with pytest.raises(UserError, match=r"manifest.json changed after signing; extra.bin added"):
        pull("id/cpt-lora:4", str(registry), tmp_path / "added", require_signature=public)
    (registry / "id/cpt-lora/4/extra.bin").unlink()
    (registry / "id/cpt-lora/4/README.md").unlink()
    _rewrite_manifest(registry / "id/cpt-lora/4", lambda m: m.update(
        files=[f for f in m["files"] if f["path"] not in ("extra.bin", "README.md")]))
    with pytest.raises(UserError, match=r"manifest.json changed after signing; README.md removed"):
        pull("id/cpt-lora:4", str(registry), tmp_path / "removed", require_signature=public)
    for refused in ("unsigned", "other", "forged", "tampered-manifest", "added", "removed"):
        assert not (tmp_path / refused).exists()
    assert not list(tmp_path.glob(".*partial*"))  # no staging left behind either

    # A signature moved onto another package (a replay), or a signature file that is not one.
    (registry / "id/cpt-lora/2" / SIGNATURE_NAME).write_bytes((registry / "id/cpt-lora/1" / SIGNATURE_NAME).read_bytes())
    with pytest.raises(UserError, match="manifest.json changed after signing"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "moved", require_signature=public)
    (registry / "id/cpt-lora/2" / SIGNATURE_NAME).write_bytes(b"{}")
    with pytest.raises(UserError, match="not a model-signing signature"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "junk", require_signature=public)
    # The signed statement edited (here: a digest), its envelope signature then fails.
    bundle = json.loads((registry / "id/cpt-lora/3" / SIGNATURE_NAME).read_text())
    payload = base64.b64decode(bundle["dsseEnvelope"]["payload"]).replace(b'"sha256"', b'"sha256" ', 1)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    (registry / "id/cpt-lora/2" / SIGNATURE_NAME).write_text(json.dumps(bundle))
    with pytest.raises(UserError, match="statement was altered"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "altered", require_signature=public)


def _legacy_sign(package, ed_private) -> None:
    """What countrytune wrote before model-signing: manifest.sig, ed25519 over manifest.json."""
    from cryptography.hazmat.primitives import serialization

    raw = ed_private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    manifest = (package / "manifest.json").read_bytes()
    record = {"format": "countrytune-ed25519-v1", "algorithm": "ed25519",
              "key_id": hashlib.sha256(raw).hexdigest()[:16], "signed_file": "manifest.json",
              "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
              "signature": base64.b64encode(ed_private.sign(manifest)).decode("ascii")}
    (package / LEGACY_SIGNATURE_NAME).write_text(json.dumps(record, indent=2) + "\n")


def test_a_legacy_ed25519_package_still_verifies_with_its_old_key(tiny_run, keys, tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    (new_private, new_public), _ = keys
    old = ed25519.Ed25519PrivateKey.generate()
    old_public = tmp_path / "old.pub"
    old_public.write_bytes(old.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    registry = tmp_path / "registry"
    export_run(tiny_run.path, str(registry), "1", log=lambda _: None)
    _legacy_sign(registry / "id/cpt-lora/1", old)
    export_run(tiny_run.path, str(registry), "2", sign_key=new_private, log=lambda _: None)

    out = pull("id/cpt-lora:1", str(registry), tmp_path / "legacy", require_signature=old_public)
    assert signature_link(out, old_public).detail.startswith("manifest signed by key")
    assert "legacy" in signature_link(out, old_public).detail
    with pytest.raises(UserError, match="old ed25519 format.*re-export"):
        pull("id/cpt-lora:1", str(registry), tmp_path / "wrong-kind", require_signature=new_public)
    with pytest.raises(UserError, match="needs an ECDSA public key"):
        pull("id/cpt-lora:2", str(registry), tmp_path / "old-key-new-package", require_signature=old_public)
    _rehash(registry, "id/cpt-lora/1", "adapter_model.safetensors", b"not the trained weights")
    with pytest.raises(UserError, match="manifest was changed after it was signed"):
        pull("id/cpt-lora:1", str(registry), tmp_path / "legacy-forged", require_signature=old_public)
    assert signature_link(out, new_public).status == BROKEN
    # An old key can no longer sign: the message says how to make a new one.
    old_private = tmp_path / "old.key"
    old_private.write_bytes(old.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    with pytest.raises(UserError, match="countrytune keys generate"):
        export_run(tiny_run.path, str(registry), "3", sign_key=old_private, log=lambda _: None)
    assert main(["keys", "show", str(old_public)]) == 0 and len(capsys.readouterr().out.strip()) == 16


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
