"""`export`: a finished training run -> a self-describing, verifiable package in a registry.

A LoRA package holds exactly what peft and vLLM read, plus what a deployment team needs:

    adapter_config.json, adapter_model.safetensors   byte-for-byte the run's peft output
    tokenizer files                                  only when the run's tokenizer differs from the base's
    base_model/                                      only when the recipe built a tiny base on the fly
    README.md                                        model card
    manifest.json                                    provenance + SHA-256 and size of every other file

With `merged=True` a second package `<name>-merged:<version>` holds full weights with the
adapter folded in (safetensors shards) and the tokenizer, for servers without LoRA.

With `as_base=True` the only package is `<name>-base:<version>`, a country base: full weights
with the adapter and any trained new-token rows folded in, the (extended) tokenizer, and a
provenance.json that keeps the original base's source and licence and lists every change since
(vocabulary extension, this training run). LoRA recipes name its pulled directory as their
base; their adapters then carry no new vocabulary and pass the vLLM check.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from countrytune.software import EXPORT, software_versions
from countrytune.errors import UserError
from countrytune.locations import check_location
from pipeline.export.compat import (
    DEFAULT_MAX_LORA_RANK,
    base_vocab_size,
    check_adapter,
    read_safetensors_header,
    tensor_modules,
)
from countrytune.artifacts.manifest import (
    AdapterInfo,
    BaseModelRef,
    Compatibility,
    MANIFEST_NAME,
    Manifest,
    file_entries,
    write_manifest,
)
from pipeline.export.model_card import BASE_MODEL_SUBDIR, render_model_card
from pipeline.registry.refs import (
    BASE_SUFFIX,
    MERGED_SUFFIX,
    Ref,
    check_component,
    check_version,
)
from pipeline.registry import open_registry
from pipeline.registry.signing import load_signer, sign_package
from pipeline.export.run_dir import TrainingRun, load_run, read_lineage

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
BASE_LICENCE_PREFIX = "BASE_MODEL_LICENSE"
DEFAULT_MAX_SHARD_SIZE = "2GB"
"""Merged weights per safetensors shard: small enough for resumable transfers and for
registries that cap blob size, large enough that a 7B model is a handful of files."""


def _copy_files(src: Path, dest: Path, taken: set[str]) -> None:
    """Copy the top-level regular files of `src` into `dest`, refusing name clashes."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and not path.is_symlink():
            rel = (dest / path.name).as_posix()
            if rel in taken:
                raise UserError(f"{path}: its name clashes with another package file")
            taken.add(rel)
            shutil.copy2(path, dest / path.name)


def _adapter_info(run: TrainingRun, kind: str) -> AdapterInfo | None:
    if run.adapter_dir is None:
        return None  # a full-parameter run
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    modules, _ = tensor_modules(read_safetensors_header(run.adapter_dir / "adapter_model.safetensors"))
    return AdapterInfo(peft_type=config.get("peft_type", "LORA"), r=int(config.get("r", 0)),
                       lora_alpha=float(config.get("lora_alpha", 0)), target_modules=sorted(modules),
                       use_rslora=bool(config.get("use_rslora", False)),
                       tokenizer_included=run.record.tokenizer.differs_from_base or kind == "merged")


def egress_lines(run: TrainingRun, lineage: list, registry_uri: str) -> list[str]:
    """What left the machine from raw text to this package: each prep run's and the training
    run's own records, and this push (a registry on another host receives the package)."""
    lines = []
    for d in lineage:
        if d.prep is None:
            lines.append(f"prep of {d.source}: not a countrytune prep output, not recorded")
        elif d.prep.egress is None:
            lines.append(f"prep of {d.source}: not recorded (prepared by an older countrytune)")
        else:
            lines += [f"prep of {d.source}: {line}" for line in d.prep.egress or ["nothing"]]
    lines += [f"training: {line}" for line in run.record.egress or ["nothing"]]
    lines.append(f"export: this package, to the registry {registry_uri}")
    return lines


def build_manifest(run: TrainingRun, kind: str, name: str, version: str,
                   compat: Compatibility | None, base_vocab: int | None, registry_uri: str) -> Manifest:
    """Everything but the file list (added once the package directory is complete)."""
    rec = run.record
    lineage = read_lineage(run)
    return Manifest(
        kind=kind, country=rec.country, languages=rec.languages, name=name, version=version,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        base_model=BaseModelRef(name_or_path=rec.base_model.name_or_path, revision=rec.base_model.revision,
                                config_sha256=rec.base_model.config_sha256,
                                built_tiny=rec.base_model.built_tiny, vocab_size=base_vocab,
                                model_name=rec.base_model.model_name, licence=rec.base_model.licence,
                                licence_file=_licence_file_name(run),
                                imported_from=rec.base_model.imported_from,
                                gguf_sha256=rec.base_model.gguf_sha256,
                                weights_sha256=rec.base_model.weights_sha256,
                                package=rec.base_model.package),
        method=rec.method, adapter=_adapter_info(run, kind), compatibility=compat, recipe=run.recipe, recipe_sha256=rec.recipe_sha256,
        metrics=rec.metrics, eval=rec.eval,
        heldout_eval=rec.heldout_eval,
        data=lineage, data_mixture=rec.data_mixture, initial_adapter=rec.initial_adapter,
        preference=rec.preference, egress=egress_lines(run, lineage, registry_uri),
        software={"training": dict(rec.software), "export": software_versions(EXPORT)},
        training_started=rec.started, training_finished=rec.finished, files=[])


def _licence_source(run: TrainingRun) -> Path | None:
    """The base model's licence text (imported bases carry one), to ship with the package."""
    name = run.record.base_model.licence_file
    if not name or run.base_model_dir is None or not (run.base_model_dir / name).is_file():
        return None
    return run.base_model_dir / name


def _licence_file_name(run: TrainingRun) -> str | None:
    src = _licence_source(run)
    return None if src is None else BASE_LICENCE_PREFIX + src.suffix


def finish_package(pkg: Path, manifest: Manifest) -> Manifest:
    """Write README.md, then hash every file into the manifest and write it last."""
    (pkg / "README.md").write_text(render_model_card(manifest), encoding="utf-8")
    manifest = manifest.model_copy(update={"files": file_entries(pkg)})
    write_manifest(pkg, manifest)
    return manifest


def build_lora_package(run: TrainingRun, pkg: Path, manifest: Manifest) -> Manifest:
    pkg.mkdir(parents=True)
    taken = {"README.md", MANIFEST_NAME}
    for name in ADAPTER_FILES:
        shutil.copy2(run.adapter_dir / name, pkg / name)
        taken.add(name)
    if run.record.tokenizer.differs_from_base:
        _copy_files(run.tokenizer_dir, pkg, taken)
    licence = _licence_source(run)
    if licence is not None:  # the base's terms travel with what is derived from it
        shutil.copyfile(licence, pkg / _licence_file_name(run))
    if run.record.base_model.built_tiny:
        # A built base exists nowhere else: ship it, with the run's tokenizer (its only one),
        # so `vllm serve PACKAGE/base_model` and from_pretrained find a complete model.
        _copy_files(run.root / "base_model", pkg / BASE_MODEL_SUBDIR, taken)
        _copy_files(run.tokenizer_dir, pkg / BASE_MODEL_SUBDIR, taken)
    return finish_package(pkg, manifest)


def _country_base_files(run: TrainingRun, pkg: Path, manifest: Manifest) -> None:
    """A country base's record of where it came from: the parent's vocabulary extension record
    and a provenance.json with this merge appended to its derivations."""
    from countrytune.hashing import sha256_file
    from countrytune.artifacts.provenance import (
        PROVENANCE_NAME,
        write_provenance,
        Derivation,
        WrittenFile,
        read_provenance,
    )
    from countrytune.artifacts.vocabulary_extension import RECORD_NAME as VOCABULARY_RECORD

    parent = read_provenance(run.base_model_dir) if run.base_model_dir else None
    if run.base_model_dir and (run.base_model_dir / VOCABULARY_RECORD).is_file():
        shutil.copyfile(run.base_model_dir / VOCABULARY_RECORD, pkg / VOCABULARY_RECORD)
    if parent is None:
        return  # a hub id or a directory not made by countrytune: the manifest names it
    files = [WrittenFile(path=p.relative_to(pkg).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
             for p in sorted(pkg.rglob("*")) if p.is_file()]
    how = "lora_merged" if run.record.method == "lora" else "full"
    merge = Derivation(kind=f"{run.record.task}_{how}", parent=str(run.base_model_dir),
                       parent_model_name=parent.model_name,
                       parent_provenance_sha256=sha256_file(run.base_model_dir / PROVENANCE_NAME),
                       record=MANIFEST_NAME, created=manifest.created)
    provenance = parent.model_copy(update={"model_name": f"{manifest.country}/{manifest.name}:{manifest.version}",
                                           "files": files, "derivations": [*parent.derivations, merge]})
    write_provenance(pkg, provenance)


def build_merged_package(run: TrainingRun, pkg: Path, manifest: Manifest,
                         max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> Manifest:
    """Fold the adapter (and any trainable token rows) into the base weights (peft
    merge_and_unload) and save shards, or take a full-parameter run's model as it is; a
    country base (kind `base`) also gets its provenance."""
    if run.model_dir is not None:  # method: full: the trained model is the package's weights
        _copy_files(run.model_dir, pkg, {"README.md", MANIFEST_NAME})
        return _finish_full_weights(run, pkg, manifest)
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from countrytune.hf_models import load_causal_lm

    base_path = str(run.base_model_dir) if run.base_model_dir else run.record.base_model.name_or_path
    revision = None if run.base_model_dir else run.record.base_model.revision
    with torch.no_grad():
        base = load_causal_lm(base_path, revision=revision, dtype="auto",
                                                    use_safetensors=True)  # never unpickle .bin
        model = PeftModel.from_pretrained(base, str(run.adapter_dir)).merge_and_unload()
        model.save_pretrained(pkg, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(str(run.tokenizer_dir)).save_pretrained(pkg)
    return _finish_full_weights(run, pkg, manifest)


def _finish_full_weights(run: TrainingRun, pkg: Path, manifest: Manifest) -> Manifest:
    licence = _licence_source(run)
    if licence is not None:
        shutil.copyfile(licence, pkg / _licence_file_name(run))
    if manifest.kind == "base":
        _country_base_files(run, pkg, manifest)
    return finish_package(pkg, manifest)


def export_run(run_dir: Path | str, registry_uri: str | None, version: str, name: str | None = None, *,
               max_lora_rank: int = DEFAULT_MAX_LORA_RANK, allow_incompatible: bool = False,
               merged: bool = False, max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
               insecure: bool = False, as_base: bool = False, sign_key: Path | str | None = None,
               log: Callable[[str], None] | None = None, published: list[str] | None = None) -> str:
    """Package a finished run and push it as `<country>/<name>:<version>`; return that ref.

    With `merged`, also push `<country>/<name>-merged:<version>`. With `as_base`, push only a
    country base `<country>/<name>-base:<version>` (full weights; no LoRA package, so the
    vLLM LoRA rules do not apply). Raises UserError when the run is unfinished, a version
    exists, or vLLM could not serve the adapter (unless `allow_incompatible`, which records the
    problems in the manifest and model card). With `sign_key` (an ECDSA private key file) each
    package carries model.sig, a model-signing signature of every file. `published` collects each ref
    once it is in the registry with `latest` moved, so an interrupted caller knows what landed."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_version(version)
    if as_base and merged:
        raise UserError("--as-base already pushes full merged weights; drop --merged")
    signer = load_signer(sign_key) if sign_key else None  # a bad key fails before any work
    run = load_run(run_dir)
    if run.adapter_dir is None and not as_base:
        raise UserError(f"{run.root}: a full-parameter run (method: full) has no adapter to serve as a "
                        f"LoRA; export it as a country base: countrytune export {run.root} --as-base ...")
    name = check_component(name or run.record.name, "package name")
    check_component(run.record.country, "country")
    registry = open_registry(registry_uri, insecure=insecure)
    check_location(registry.uri, run.record.country, "export registry")
    kinds = ["base"] if as_base else ["lora"] + (["merged"] if merged else [])
    suffix = {"lora": "", "merged": MERGED_SUFFIX, "base": BASE_SUFFIX}
    refs = {kind: Ref(run.record.country, name + suffix[kind], version) for kind in kinds}
    for ref in refs.values():  # refuse before minutes of merging, not after
        if registry.exists(ref):
            raise UserError(f"{ref} already exists in {registry.uri}; versions are immutable: "
                            f"export with a new --version")

    base_vocab = base_vocab_size(run.base_model_dir)
    compat = None if run.adapter_dir is None else check_adapter(
        run.adapter_dir, max_lora_rank=max_lora_rank, tokenizer_dir=run.tokenizer_dir,
        tokenizer_differs=run.record.tokenizer.differs_from_base, base_vocab=base_vocab)
    if "lora" in refs:  # a country base merges the adapter: nothing is served as a LoRA
        if compat.problems:
            reasons = "\n".join(f"  - {p}" for p in compat.problems)
            if not allow_incompatible:
                raise UserError(f"{run.root}: vLLM multi-LoRA could not serve this adapter:\n{reasons}\n"
                                f"Fix the training recipe, or pass --allow-incompatible to export it anyway "
                                f"(the problems are then written into the model card)")
            log(f"warning: exporting an adapter vLLM cannot serve (--allow-incompatible):\n{reasons}")
        for warning in compat.warnings:
            log(f"warning: {warning}")

    with tempfile.TemporaryDirectory(prefix="countrytune-export-") as tmp:
        for kind, ref in refs.items():
            manifest = build_manifest(run, kind, ref.name, version, compat, base_vocab, registry.uri)
            if kind == "lora":
                build_lora_package(run, Path(tmp) / kind, manifest)
            else:
                build_merged_package(run, Path(tmp) / kind, manifest, max_shard_size)
            if signer is not None:  # every file, manifest.json (written last) included
                sign_package(Path(tmp) / kind, signer)
        # Every package is built before any is pushed, so a failed merge pushes nothing; each
        # push is atomic on its own (a lost race on the merged name leaves the LoRA pushed).
        for kind, ref in refs.items():
            try:
                registry.push(Path(tmp) / kind, ref)
            except KeyboardInterrupt:  # the push may have landed before the interrupt did
                if published is not None and _landed(registry, ref):
                    published.append(str(ref))
                raise
            if published is not None:
                published.append(str(ref))
            log(f"pushed {ref} to {registry.uri}")
    return str(refs[kinds[0]])


def _landed(registry, ref: Ref) -> bool:
    """The version is in the registry and `latest` names it: the push completed."""
    try:
        return registry.exists(ref) and registry.latest_version(Ref(ref.country, ref.name)) == ref.version
    except (UserError, OSError):
        return False
