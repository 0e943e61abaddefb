"""Our signatures are model-signing's, not a look-alike: the stock `model_signing` command
(PyPI model-signing, sigstore/model-transparency), run as deployment staff would run it,
accepts a package countrytune signed and refuses it once one byte changes; and a package that
`model_signing sign key` signed with a countrytune key passes countrytune's pull and verify.
Key flow only: nothing here reaches a network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from export_fixtures import make_prep_dir, make_run

from countrytune_cli import main
from countrytune.errors import UserError
from pipeline.export import export_run, pull
from pipeline.export.verify import BROKEN, VERIFIED, signature_link
from pipeline.registry.signing import SIGNATURE_NAME, generate_key

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"  # the CLI installed beside our python


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-signing")
    return make_run(root / "run", make_prep_dir(root / "prep"))


def _model_signing(*args: str) -> subprocess.CompletedProcess:
    if not MODEL_SIGNING.is_file():
        pytest.fail(f"{MODEL_SIGNING} missing: pip install 'model-signing>=1.1.1,<1.2' pyopenssl")
    return subprocess.run([str(MODEL_SIGNING), *map(str, args)], capture_output=True, text=True, timeout=120)


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_stock_model_signing_cli_verifies_a_countrytune_package(tiny_run, tmp_path):
    private, public = generate_key(tmp_path / "keys")
    registry = tmp_path / "registry"
    export_run(tiny_run.path, str(registry), "1", sign_key=private, log=lambda _: None)
    pkg = pull("id/cpt-lora:1", str(registry), tmp_path / "pulled", require_signature=public)

    ok = _model_signing("verify", "key", pkg, "--signature", pkg / SIGNATURE_NAME, "--public_key", public)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Verification succeeded" in ok.stdout

    _, other = generate_key(tmp_path / "other")
    wrong = _model_signing("verify", "key", pkg, "--signature", pkg / SIGNATURE_NAME, "--public_key", other)
    assert wrong.returncode != 0 and "Key mismatch" in wrong.stderr

    changed = Path(shutil.copytree(pkg, tmp_path / "changed"))
    _flip_one_byte(changed / "adapter_model.safetensors")
    bad = _model_signing("verify", "key", changed, "--signature", changed / SIGNATURE_NAME, "--public_key", public)
    assert bad.returncode != 0, bad.stdout
    assert "Hash mismatch for" in bad.stderr and "adapter_model.safetensors" in bad.stderr

    # Every file is signed, the manifest too: a byte of it changed is refused as well.
    edited = Path(shutil.copytree(pkg, tmp_path / "edited"))
    _flip_one_byte(edited / "manifest.json")
    bad = _model_signing("verify", "key", edited, "--signature", edited / SIGNATURE_NAME, "--public_key", public)
    assert bad.returncode != 0 and "Hash mismatch for" in bad.stderr and "manifest.json" in bad.stderr


def test_a_package_signed_by_the_model_signing_cli_passes_countrytune(tiny_run, tmp_path, capsys):
    # An unencrypted key: model-signing 1.1.1's `--password` hands cryptography a str, which
    # it refuses, so its CLI cannot sign with an encrypted key (countrytune passes bytes).
    private, public = generate_key(tmp_path / "keys")
    registry = tmp_path / "registry"
    export_run(tiny_run.path, str(registry), "1", log=lambda _: None)  # unsigned by countrytune
    entry = registry / "id" / "cpt-lora" / "1"  # a local registry stores the package's files as they are
    signed = _model_signing("sign", "key", entry, "--private_key", private, "--signature", entry / SIGNATURE_NAME)
    assert signed.returncode == 0, signed.stdout + signed.stderr

    pkg = pull("id/cpt-lora:1", str(registry), tmp_path / "pulled", require_signature=public)
    link = signature_link(pkg, public)
    assert link.status == VERIFIED and link.detail.startswith("every file signed by key"), link
    assert main(["verify", str(pkg), "--public-key", str(public)]) == 0
    assert main(["verify", "id/cpt-lora:1", "--registry", str(registry), "--public-key", str(public)]) == 0
    capsys.readouterr()

    _flip_one_byte(pkg / "README.md")
    assert signature_link(pkg, public).status == BROKEN
    assert "README.md changed after signing" in signature_link(pkg, public).detail

    # The CLI's own ignore list is honoured by its verifier, but countrytune wants every file
    # signed: a file the signer left out is refused, never trusted on the manifest's word alone.
    (entry / "notes.txt").write_text("not in the signature")
    resigned = _model_signing("sign", "key", entry, "--private_key", private, "--signature", entry / SIGNATURE_NAME,
                              "--ignore-paths", entry / "notes.txt")
    assert resigned.returncode == 0, resigned.stderr
    unsigned = Path(shutil.copytree(entry, tmp_path / "left-out"))
    assert "notes.txt' is not covered by model.sig" in signature_link(unsigned, public).detail
    with pytest.raises(UserError, match="stored but not in the manifest"):  # and pull never gets that far
        pull("id/cpt-lora:1", str(registry), tmp_path / "never", require_signature=public)
