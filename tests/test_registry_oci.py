"""Export and pull through a real OCI registry (the reference distribution registry 2.8).

Starts `/usr/bin/docker-registry serve` on a free loopback port with its storage under
tmp; skipped when the binary is missing (scripts/install-services.sh installs it in CI).
"""

from __future__ import annotations

import argparse
import json
import urllib.request

import pytest
import torch
from export_fixtures import load_pulled, make_prep_dir, make_run
from oci_servers import registry

from countrytune.errors import UserError
from pipeline.export import export_run, pull
from countrytune.artifacts.manifest import parse_manifest
from pipeline.registry.refs import Ref
from pipeline.registry import open_registry
from pipeline.registry.oci import ARTIFACT_TYPE, OCI_MANIFEST, TITLE

NAMESPACE = "countrytune"


@pytest.fixture(scope="module")
def oci_registry(tmp_path_factory):
    """(oci:// URI, http base, storage dir) of a registry serving for this module."""
    root = tmp_path_factory.mktemp("oci")
    with registry(root) as base:
        yield f"oci://{base.removeprefix('http://')}/{NAMESPACE}", base, root / "storage"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("oci-run")
    return make_run(root / "run", make_prep_dir(root / "prep"))


def _get_json(url: str, accept: str = OCI_MANIFEST) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept})) as r:
        return json.loads(r.read())


def test_push_pull_list_show_duplicate_latest(oci_registry, tiny_run, tmp_path, capsys):
    uri, base, _ = oci_registry
    quiet = {"log": lambda _: None}
    assert export_run(tiny_run.path, uri, "1", **quiet) == "id/cpt-lora:1"

    # ORAS-style artifact: artifact type, one layer per file named by its title.
    manifest = _get_json(f"{base}/v2/{NAMESPACE}/id/cpt-lora/manifests/1")
    assert manifest["artifactType"] == ARTIFACT_TYPE
    titles = {layer["annotations"][TITLE] for layer in manifest["layers"]}
    assert {"manifest.json", "adapter_model.safetensors", "README.md", "base_model/model.safetensors"} <= titles

    out = pull("id/cpt-lora:1", uri, tmp_path / "v1")
    with torch.no_grad():
        assert torch.equal(load_pulled(out)(input_ids=tiny_run.input_ids).logits, tiny_run.logits)

    with pytest.raises(UserError, match="already exists.*immutable"):
        export_run(tiny_run.path, uri, "1", **quiet)

    registry = open_registry(uri)
    assert registry.latest_version(Ref("id", "cpt-lora")) == "1"
    export_run(tiny_run.path, uri, "2", **quiet)
    assert open_registry(uri).latest_version(Ref("id", "cpt-lora")) == "2"
    latest = pull("id", uri, tmp_path / "latest")  # the country's only package, at latest
    assert parse_manifest((latest / "manifest.json").read_bytes(), "t").version == "2"

    [entry] = list(open_registry(uri).packages("id"))
    assert (entry.country, entry.name, entry.versions, entry.latest) == ("id", "cpt-lora", ["1", "2"], "2")

    from pipeline.export.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    for argv in (["list", "--registry", uri], ["show", "id/cpt-lora:1", "--registry", uri]):
        args = parser.parse_args(argv)
        assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "id/cpt-lora" in printed and "id/cpt-lora:1" in printed and "--enable-lora" in printed


def test_tampered_blob_in_registry_storage_is_refused(oci_registry, tiny_run, tmp_path):
    uri, base, storage = oci_registry
    export_run(tiny_run.path, uri, "tamper", name="tamper-test", log=lambda _: None)
    manifest = _get_json(f"{base}/v2/{NAMESPACE}/id/tamper-test/manifests/tamper")
    layer = next(x for x in manifest["layers"] if x["annotations"][TITLE] == "adapter_model.safetensors")
    digest = layer["digest"].split(":")[1]
    blob = storage / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    original = blob.read_bytes()
    data = bytearray(original)
    data[200] ^= 0xFF  # the registry serves stored blobs without re-hashing them
    blob.write_bytes(bytes(data))
    try:
        with pytest.raises(UserError, match="adapter_model.safetensors.*SHA-256"):
            pull("id/tamper-test:tamper", uri, tmp_path / "pulled")
    finally:  # blobs are shared by content: every later push of this adapter would serve it
        blob.write_bytes(original)
    assert not (tmp_path / "pulled").exists()


def test_unknown_package_and_version_say_what_is_there(oci_registry):
    uri, _, _ = oci_registry
    registry = open_registry(uri)
    with pytest.raises(UserError, match="nothing pushed"):
        registry.resolve(Ref("my", "cpt-lora"))
    with pytest.raises(UserError, match="countrytune list"):
        pull("id/tamper-test:nope", uri, "/nonexistent/never-written")


def test_signed_package_travels_through_oci(oci_registry, tiny_run, tmp_path):
    """manifest.sig is stored as one more layer and checked on pull, as on a local registry."""
    from pipeline.registry.signing import SIGNATURE_NAME, generate_key

    uri, _, _ = oci_registry
    private, public = generate_key(tmp_path / "keys")
    assert export_run(tiny_run.path, uri, "signed-1", sign_key=private, log=lambda _: None) == "id/cpt-lora:signed-1"
    out = pull("id/cpt-lora:signed-1", uri, tmp_path / "pulled", require_signature=public)
    assert (out / SIGNATURE_NAME).is_file()
    _, other = generate_key(tmp_path / "other")
    with pytest.raises(UserError, match="not by the required key"):
        pull("id/cpt-lora:signed-1", uri, tmp_path / "refused", require_signature=other)


def test_the_stock_oras_client_pulls_a_package_whole(oci_registry, tiny_run, tmp_path):
    """Deployment staff without countrytune: `oras pull HOST/NAMESPACE/COUNTRY/NAME:VERSION`
    (here oras-py, the ORAS project's Python client) gets every file of the package, byte for
    byte what the manifest lists."""
    import hashlib

    oras_client = pytest.importorskip("oras.client", reason="oras-py is in the dev extra")
    uri, base, _ = oci_registry
    export_run(tiny_run.path, uri, "7", log=lambda _: None)
    host = base.removeprefix("http://")
    client = oras_client.OrasClient(hostname=host, insecure=True)
    client.pull(target=f"{host}/{NAMESPACE}/id/cpt-lora:7", outdir=str(tmp_path / "oras"))
    manifest = parse_manifest((tmp_path / "oras" / "manifest.json").read_bytes(), "oras pull")
    assert manifest.version == "7" and manifest.files
    for entry in manifest.files:
        data = (tmp_path / "oras" / entry.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.path
