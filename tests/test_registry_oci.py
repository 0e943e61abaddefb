"""Export and pull through a real OCI registry (the reference distribution registry 2.8).

Starts `/usr/bin/docker-registry serve` on a free loopback port with its storage under
tmp; skipped when the binary is missing (scripts/install-services.sh installs it in CI).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import urllib.parse
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
from pipeline.registry import modelpack
from pipeline.registry.oci import ARTIFACT_TYPE, KIND, OCI_MANIFEST, TITLE

NAMESPACE = "countrytune"

# The CNCF ModelPack spec, modelpack/model-spec at d78bf32 (2026-06-08), copied here so the test
# checks our pushes against the spec's text, not against our own constants.
# docs/spec.md, "layers": every layer media type an implementation should support.
SPEC_LAYER_TYPES = {f"application/vnd.cncf.model.{role}.v1.{form}"
                    for role in ("weight", "weight.config", "doc", "code", "dataset")
                    for form in ("raw", "tar", "tar+gzip", "tar+zstd")}
SPEC_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
SPEC_CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
SPEC_FILEPATH = "org.cncf.model.filepath"  # docs/annotations.md, layer annotation keys
_STRING, _STRINGS = {"type": "string"}, {"type": "array", "items": {"type": "string"}}
SPEC_CONFIG_SCHEMA = {  # schema/config-schema.json, as published
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/modelpack/model-spec/config",
    "type": "object",
    "properties": {"descriptor": {"$ref": "#/$defs/ModelDescriptor"}, "modelfs": {"$ref": "#/$defs/ModelFS"},
                   "config": {"$ref": "#/$defs/ModelConfig"}},
    "additionalProperties": False,
    "required": ["descriptor", "config", "modelfs"],
    "$defs": {
        "ModelConfig": {"type": "object", "additionalProperties": False, "properties": {
            "architecture": _STRING, "format": _STRING, "paramSize": _STRING, "precision": _STRING,
            "quantization": _STRING, "capabilities": {"$ref": "#/$defs/ModelCapabilities"}}},
        "ModelDescriptor": {"type": "object", "additionalProperties": False, "properties": {
            "createdAt": {"type": "string", "format": "date-time"}, "authors": _STRINGS, "family": _STRING,
            "name": {"type": "string", "minLength": 1}, "docURL": _STRING, "sourceURL": _STRING,
            "datasetsURL": _STRINGS, "version": _STRING, "revision": _STRING, "vendor": _STRING,
            "licenses": _STRINGS, "title": _STRING, "description": _STRING}},
        "ModelFS": {"type": "object", "additionalProperties": False, "required": ["type", "diffIds"],
                    "properties": {"type": {"type": "string", "enum": ["layers"]},
                                   "diffIds": {"type": "array", "items": _STRING, "minItems": 1}}},
        "ModelCapabilities": {"type": "object", "additionalProperties": False, "properties": {
            "inputTypes": {"type": "array", "items": {"$ref": "#/$defs/Modality"}},
            "outputTypes": {"type": "array", "items": {"$ref": "#/$defs/Modality"}},
            "knowledgeCutoff": {"type": "string", "format": "date-time"},
            "reasoning": {"type": "boolean"}, "toolUsage": {"type": "boolean"}, "reward": {"type": "boolean"},
            "languages": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{2}$"}}}},
        "Modality": {"type": "string", "enum": ["text", "image", "audio", "video", "embedding", "other"]},
    },
}
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
"""jsonschema checks `format: date-time` only with rfc3339-validator installed: checked here."""
OLD_ARTIFACT_TYPE = "application/vnd.countrytune.adapter.v1+json"  # before the ModelPack layout


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


def _get(url: str, accept: str = OCI_MANIFEST) -> tuple[bytes, dict]:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept})) as r:
        return r.read(), dict(r.headers)


def _push_by_hand(base: str, repo: str, tags: list[str], files: dict[str, bytes], *,
                  artifact_type: str, config: bytes, config_type: str, layer_type) -> None:
    """Push an artifact with the plain distribution API (not countrytune's client): blobs by
    monolithic upload, then the manifest under each tag."""
    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start) as r:
            location = urllib.parse.urljoin(base, r.headers["Location"])
        sep = "&" if "?" in location else "?"
        urllib.request.urlopen(urllib.request.Request(
            f"{location}{sep}digest={urllib.parse.quote(digest)}", data=data, method="PUT",
            headers={"Content-Type": "application/octet-stream"})).close()
        return digest

    layers = [{"mediaType": layer_type(path), "digest": blob(data), "size": len(data),
               "annotations": {TITLE: path}} for path, data in sorted(files.items())]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                "config": {"mediaType": config_type, "digest": blob(config), "size": len(config)},
                "layers": layers, "annotations": {"org.opencontainers.image.version": tags[0],
                                                  "io.countrytune.package": repo.split("/", 1)[1]}}
    for tag in tags:
        urllib.request.urlopen(urllib.request.Request(
            f"{base}/v2/{repo}/manifests/{tag}", data=json.dumps(manifest).encode(), method="PUT",
            headers={"Content-Type": OCI_MANIFEST})).close()


def _pushed(base: str, package: str, version: str) -> tuple[dict, dict]:
    """(OCI manifest, config JSON) of a pushed package, checking the registry returns the
    manifest byte for byte under its digest and the config blob under its own."""
    raw, headers = _get(f"{base}/v2/{NAMESPACE}/{package}/manifests/{version}")
    assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest = json.loads(raw)
    config_raw, _ = _get(f"{base}/v2/{NAMESPACE}/{package}/blobs/{manifest['config']['digest']}", accept="*/*")
    assert "sha256:" + hashlib.sha256(config_raw).hexdigest() == manifest["config"]["digest"]
    assert len(config_raw) == manifest["config"]["size"]
    return manifest, json.loads(config_raw)


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


def test_pushes_are_modelpack_model_artifacts_that_an_oci_1_0_registry_keeps(oci_registry, tiny_run, tmp_path):
    """Requirement: the CNCF ModelPack layout (modelpack/model-spec docs/spec.md, docs/config.md,
    docs/annotations.md), stored and served unchanged by distribution 2.8, which predates OCI 1.1."""
    jsonschema = pytest.importorskip("jsonschema")
    uri, base, _ = oci_registry
    export_run(tiny_run.path, uri, "mp-1", name="mp", merged=True, max_shard_size="200KB", log=lambda _: None)
    validator = jsonschema.Draft202012Validator(SPEC_CONFIG_SCHEMA)

    for package, kind in (("id/mp", "lora"), ("id/mp-merged", "merged")):
        manifest, config = _pushed(base, package, "mp-1")
        assert manifest["mediaType"] == OCI_MANIFEST and manifest["artifactType"] == SPEC_ARTIFACT_TYPE
        assert manifest["config"]["mediaType"] == SPEC_CONFIG_TYPE
        assert manifest["annotations"][KIND] == kind
        errors = [e.message for e in validator.iter_errors(config)]
        assert not errors, errors
        assert RFC3339.fullmatch(config["descriptor"]["createdAt"])

        out = pull(f"{package}:mp-1", uri, tmp_path / kind)
        ours = parse_manifest((out / "manifest.json").read_bytes(), "t")
        assert config["descriptor"]["name"] == f"id/{ours.name}" and config["descriptor"]["version"] == "mp-1"
        assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in manifest["layers"]]
        assert config["config"]["format"] == "safetensors" and config["config"]["precision"] == "float32"
        paths = {}
        for layer in manifest["layers"]:
            assert layer["mediaType"] in SPEC_LAYER_TYPES, layer
            path = layer["annotations"][TITLE]
            assert layer["annotations"][SPEC_FILEPATH] == path
            paths[path] = layer["mediaType"]
        assert set(paths) == {f.path for f in ours.files} | {"manifest.json"}
        assert paths["manifest.json"] == modelpack.DOC and paths["README.md"] == modelpack.DOC
        assert paths["tokenizer.json" if kind == "merged" else "adapter_config.json"] == modelpack.WEIGHT_CONFIG
        weights = {p for p, t in paths.items() if t == modelpack.WEIGHT}
        assert weights == {p for p in paths if p.endswith(".safetensors")} and weights

    # Only whole models say their size and family; the numbers are the tiny Llama's own.
    assert "paramSize" not in _pushed(base, "id/mp", "mp-1")[1]["config"]
    merged = _pushed(base, "id/mp-merged", "mp-1")[1]
    import safetensors.torch

    count = sum(t.numel() for p in (tmp_path / "merged").glob("*.safetensors")
                for t in safetensors.torch.load_file(p).values())
    assert merged["config"]["paramSize"] == modelpack._param_size(count)
    assert merged["descriptor"]["family"] == "llama"

    # Negative control: the schema refuses what the spec refuses (docs/config.md: `config` is
    # required; no field outside the spec's).
    assert not validator.is_valid({k: v for k, v in merged.items() if k != "config"})
    assert not validator.is_valid({**merged, "descriptor": {**merged["descriptor"], "kind": "lora"}})


@pytest.mark.parametrize("path, media_type, guess", [
    ("adapter_model.safetensors", modelpack.WEIGHT, False),
    ("base_model/model.safetensors", modelpack.WEIGHT, False),
    ("model-00001-of-00002.safetensors", modelpack.WEIGHT, False),
    ("model.safetensors.index.json", modelpack.WEIGHT_CONFIG, False),
    ("adapter_config.json", modelpack.WEIGHT_CONFIG, False),
    ("generation_config.json", modelpack.WEIGHT_CONFIG, False),
    ("tokenizer.model", modelpack.WEIGHT_CONFIG, False),
    ("merges.txt", modelpack.WEIGHT_CONFIG, False),
    ("chat_template.jinja", modelpack.WEIGHT_CONFIG, False),
    ("README.md", modelpack.DOC, False),
    ("BASE_MODEL_LICENSE.txt", modelpack.DOC, False),
    ("manifest.json", modelpack.DOC, False),
    ("manifest.sig", modelpack.DOC, False),
    ("modeling_custom.py", modelpack.CODE, False),
    ("something.xyz", modelpack.DOC, True),
])
def test_each_file_travels_as_its_role(path, media_type, guess):
    assert modelpack.layer_type(path) == (media_type, guess)
    assert media_type in SPEC_LAYER_TYPES
    assert (modelpack.UNTESTED in modelpack.layer_annotations(path, TITLE)) == guess


def test_param_size_reads_as_the_spec_writes_it():
    assert [modelpack._param_size(n) for n in (134_515_008, 999_960, 6_700_000_000, 8_000_000_000, 940)] == \
        ["134.5M", "1M", "6.7B", "8B", None]


def test_a_package_pushed_the_old_way_still_pulls_and_verifies(oci_registry, tiny_run, tmp_path):
    """Registries hold packages pushed before the ModelPack layout: artifact and config type
    application/vnd.countrytune.adapter.v1+json, an empty config, octet-stream layers."""
    uri, base, _ = oci_registry
    local = tmp_path / "local"
    export_run(tiny_run.path, str(local), "old-1", name="cpt-old", log=lambda _: None)
    package = local / "id" / "cpt-old" / "old-1"
    files = {p.relative_to(package).as_posix(): p.read_bytes() for p in package.rglob("*") if p.is_file()}
    _push_by_hand(base, f"{NAMESPACE}/id/cpt-old", ["old-1", "latest"], files,
                  artifact_type=OLD_ARTIFACT_TYPE, config=b"{}", config_type=OLD_ARTIFACT_TYPE,
                  layer_type=lambda p: "application/vnd.countrytune.manifest.v1+json"
                  if p == "manifest.json" else "application/octet-stream")
    assert _get_json(f"{base}/v2/{NAMESPACE}/id/cpt-old/manifests/old-1")["artifactType"] == OLD_ARTIFACT_TYPE

    registry = open_registry(uri)
    entry = registry.versions(Ref("id", "cpt-old"))
    assert (entry.versions, entry.latest) == (["old-1"], "old-1")
    assert sorted(registry.stored_files(Ref("id", "cpt-old", "old-1"))) == sorted(files)
    out = pull("id/cpt-old", uri, tmp_path / "pulled")  # at latest: every file checked
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    with torch.no_grad():
        assert torch.equal(load_pulled(out)(input_ids=tiny_run.input_ids).logits, tiny_run.logits)


def test_an_artifact_of_another_type_is_refused(oci_registry, tmp_path):
    uri, base, _ = oci_registry
    _push_by_hand(base, f"{NAMESPACE}/id/helm-chart", ["1"], {"chart.tgz": b"not a package"},
                  artifact_type="application/vnd.cncf.helm.config.v1+json", config=b"{}",
                  config_type="application/vnd.cncf.helm.config.v1+json",
                  layer_type=lambda _: "application/vnd.cncf.helm.chart.content.v1.tar+gzip")
    with pytest.raises(UserError, match="not a countrytune package.*helm"):
        pull("id/helm-chart:1", uri, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    # A ModelPack model from another tool (no manifest.json) passes the type check, then is told apart.
    _push_by_hand(base, f"{NAMESPACE}/id/foreign-model", ["1"], {"model.safetensors": b"x"},
                  artifact_type=SPEC_ARTIFACT_TYPE, config=b'{"descriptor":{},"config":{},"modelfs":'
                  b'{"type":"layers","diffIds":["sha256:0"]}}', config_type=SPEC_CONFIG_TYPE,
                  layer_type=lambda _: modelpack.WEIGHT)
    with pytest.raises(UserError, match="without manifest.json, not a countrytune package"):
        pull("id/foreign-model:1", uri, tmp_path / "refused")
