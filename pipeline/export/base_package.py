"""`countrytune model push`: a base model folder -> a `base` package in a registry.

An adapter is served on exactly the base it was trained on. With the base in the same
registry as the adapters, training names it `registry://country/name:version` (pulled and
verified, pipeline/registry/bases.py), the adapter's manifest names that package and its
weight hashes, and `countrytune pull REF --with-base` brings both to the server: nobody
relies on a path on the trainer's machine.

The package is the model folder as it is (weights, config, tokenizer, provenance.json and the
licence text), a model card and manifest.json (kind `base`, no training: `method` None). Only
folders with a provenance.json are pushed (made by `countrytune model import` or `tokenizer
extend`): a base without a recorded origin and licence is not something to hand to deployment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from countrytune.artifacts.manifest import MANIFEST_NAME, BaseModelRef, Manifest, sha256_json
from countrytune.artifacts.provenance import base_summary, read_provenance
from countrytune.errors import UserError
from countrytune.hashing import weight_hashes
from countrytune.locations import check_location
from countrytune.software import EXPORT, software_versions
from pipeline.export.compat import base_vocab_size
from pipeline.export.package import finish_package
from pipeline.registry import open_registry
from pipeline.registry.refs import check_component, check_version, parse_ref
from pipeline.registry.signing import load_signer, sign_package

EXAMPLE = """example:
  countrytune model push models/smollm2-135m id/smollm2-135m:1 --registry oci://127.0.0.1:5000/countrytune
  # then, in a training recipe:  model: {name_or_path: "registry://id/smollm2-135m:1", registry: ...}
"""


def _check_model_dir(model_dir: Path):
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such folder; give a model folder made by `countrytune model import`")
    if (model_dir / MANIFEST_NAME).is_file():
        raise UserError(f"{model_dir} is already a registry package (it holds {MANIFEST_NAME}); name it "
                        f"as it is in its registry, registry://COUNTRY/NAME:VERSION")
    if not (model_dir / "config.json").is_file() or not weight_hashes(model_dir):
        raise UserError(f"{model_dir}: not a Hugging Face model folder with safetensors weights "
                        f"(config.json and *.safetensors)")
    provenance = read_provenance(model_dir)
    if provenance is None:
        raise UserError(f"{model_dir}: no provenance.json, so its origin and licence are unknown; push "
                        f"bases made by `countrytune model import` (or `tokenizer extend`)")
    for path in model_dir.rglob("*"):
        if path.is_symlink():
            raise UserError(f"{path}: packages hold regular files only, not symbolic links")
    return provenance


def _config_sha256(model_dir: Path) -> str:
    """The config as transformers loads it (values it fills in included), hashed as training
    hashes a base's (pipeline/training/model.py config_sha256), so the two can be compared."""
    from transformers import AutoConfig

    return sha256_json(AutoConfig.from_pretrained(str(model_dir)).to_dict())


def base_manifest(model_dir: Path, country: str, name: str, version: str, registry_uri: str) -> Manifest:
    provenance = _check_model_dir(model_dir)
    return Manifest(
        kind="base", country=country, languages=[], name=name, version=version,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        base_model=BaseModelRef(name_or_path=provenance.model_name, config_sha256=_config_sha256(model_dir),
                                vocab_size=base_vocab_size(model_dir), weights_sha256=weight_hashes(model_dir),
                                **base_summary(provenance)),
        method=None, recipe=None, recipe_sha256=None, metrics=None,
        egress=[f"model push: this package, to the registry {registry_uri}"],
        software={"export": software_versions(EXPORT)},
        training_started=None, training_finished=None, files=[])


def push_base_model(model_dir: Path | str, ref_text: str, registry_uri: str | None, *,
                    insecure: bool = False, sign_key: Path | str | None = None,
                    log: Callable[[str], None] | None = None) -> str:
    """Push `model_dir` as the base package `country/name:version`; return the ref."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    model_dir = Path(model_dir)
    ref = parse_ref(ref_text)
    if ref.name is None or ref.version is None:
        raise UserError(f"{ref_text!r}: give the whole reference, COUNTRY/NAME:VERSION (e.g. id/smollm2-135m:1)")
    check_version(ref.version)
    check_component(ref.name, "package name")
    registry = open_registry(registry_uri, insecure=insecure)
    check_location(registry.uri, ref.country, "export registry")
    if registry.exists(ref):
        raise UserError(f"{ref} already exists in {registry.uri}; versions are immutable: push a new version")
    signer = load_signer(sign_key) if sign_key else None  # a bad key fails before any work
    manifest = base_manifest(model_dir, ref.country, ref.name, ref.version, registry.uri)
    with tempfile.TemporaryDirectory(prefix="countrytune-base-") as tmp:
        pkg = Path(tmp) / "base"
        shutil.copytree(model_dir, pkg, ignore=shutil.ignore_patterns(".lock", ".*.partial-*"))
        finish_package(pkg, manifest)
        if signer is not None:  # every file, manifest.json included
            sign_package(pkg, signer)
        registry.push(pkg, ref)
    log(f"pushed {ref} to {registry.uri}")
    return str(ref)


def add_parser(model_actions: argparse._SubParsersAction) -> None:
    from pipeline.registry.signing import KEY_ENV

    p = model_actions.add_parser(
        "push", help="push a model folder to a registry as a base package (COUNTRY/NAME:VERSION)",
        description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="a model folder made by `countrytune model import`")
    p.add_argument("ref", help="COUNTRY/NAME:VERSION, e.g. id/smollm2-135m:1")
    p.add_argument("--registry", help="a directory, file:///path or oci://host:port/namespace "
                                      "(default: $COUNTRYTUNE_REGISTRY, else ./registry)")
    p.add_argument("--insecure", action="store_true", help="plain http to a non-loopback OCI registry")
    p.add_argument("--sign-key", type=Path, default=os.environ.get(KEY_ENV) or None,
                   help=f"private key to sign the package with (default: ${KEY_ENV}; unsigned when unset)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    print(push_base_model(args.model_dir, args.ref, args.registry, insecure=args.insecure,
                          sign_key=args.sign_key))
    return 0
