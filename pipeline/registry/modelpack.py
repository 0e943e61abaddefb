"""A package in the CNCF ModelPack layout (github.com/modelpack/model-spec): which media type
each file travels as, and the model config blob that describes the package.

Read from modelpack/model-spec at d78bf32 (2026-06-08):
  docs/spec.md, specs-go/v1/mediatype.go   artifact type, config and layer media types
  docs/annotations.md, specs-go/v1/annotations.go   layer annotation keys
  docs/config.md, schema/config-schema.json   the config: `descriptor`, `config` and `modelfs`
                                            are required, every other field is optional

Each file is one uncompressed layer (the `.raw` types: the spec recommends no compression for
weights, and a raw layer is what `oras pull` writes out as a file). Its role picks the type:
weights, weight config (model config, tokenizer, adapter_config.json), code, or documentation.
Our own records (manifest.json, the signature model.sig or legacy manifest.sig, provenance, the vocabulary extension record) are
documentation, not a countrytune type: the spec lists the types implementations support, and
ModelPack's own client (modctl, pkg/codec/codec.go) cannot extract a layer whose type ends in
neither `.raw` nor `.tar`. The file metadata annotation (owner ids, mode, mtime) is left out: it
is optional (modctl restores mode and mtime from it when present) and would publish the
exporter's user ids.

The config says only what is known: from manifest.json the name, version, creation time,
licence (when it reads as an SPDX expression) and a description; from the weight files'
safetensors headers the format, the precision and, for whole models (`merged`, `base`), the
parameter count; from config.json the family (`model_type`). The spec's `languages` takes
ISO 639-1 codes and many of our languages have only ISO 639-3 ones, so the languages go in a
manifest annotation instead (see oci.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import struct
from pathlib import Path

from countrytune.artifacts.manifest import MANIFEST_NAME, Manifest
from countrytune.artifacts.provenance import PROVENANCE_NAME
from countrytune.artifacts.vocabulary_extension import RECORD_NAME as VOCABULARY_RECORD
from pipeline.registry.signing import SIGNATURE_NAMES

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
FILEPATH = "org.cncf.model.filepath"
UNTESTED = "org.cncf.model.file.mediatype.untested"
"""Set to "true" on a layer whose type is our guess (a file none of the rules below knows)."""

WEIGHT_FORMATS = {".safetensors": "safetensors", ".gguf": "gguf", ".bin": "pt", ".pt": "pt", ".pth": "pt"}
RECORDS = {MANIFEST_NAME, *SIGNATURE_NAMES, PROVENANCE_NAME, VOCABULARY_RECORD}
WEIGHT_CONFIG_SUFFIXES = (".json", ".jinja", ".model", ".tiktoken")
WEIGHT_CONFIG_NAMES = {"vocab.txt", "merges.txt", "added_tokens.txt"}
DOC_SUFFIXES = (".md", ".txt", ".pdf", ".html")
PRECISIONS = {  # safetensors dtype -> the spec's precision name (docs/config.md)
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3", "F8_E5M2": "float8_e5m2", "I8": "int8", "I16": "int16",
    "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "BOOL": "bool"}
SPDX_EXPRESSION = re.compile(r"[A-Za-z0-9.+-]+(?: (?:AND|OR|WITH) [A-Za-z0-9.+-]+)*")
NOT_A_LICENCE = {"other", "unknown", "none", "noassertion"}
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit: a larger header is not one


def layer_type(path: str) -> tuple[str, bool]:
    """(media type, whether it is a guess) of a package file, by its path in the package."""
    name = path.rsplit("/", 1)[-1]
    lower = name.lower()
    if name in RECORDS or "LICEN" in name.upper():
        return DOC, False
    suffix = "." + lower.rsplit(".", 1)[-1] if "." in lower else ""
    if suffix in WEIGHT_FORMATS:
        return WEIGHT, False
    if suffix in WEIGHT_CONFIG_SUFFIXES or lower in WEIGHT_CONFIG_NAMES:
        return WEIGHT_CONFIG, False
    if suffix == ".py":
        return CODE, False
    if suffix in DOC_SUFFIXES:
        return DOC, False
    return DOC, True


def layer_annotations(path: str, title_key: str) -> dict[str, str]:
    """The annotations of one file's layer: its path under both the ORAS and the ModelPack key."""
    annotations = {title_key: path, FILEPATH: path}
    if layer_type(path)[1]:
        annotations[UNTESTED] = "true"
    return annotations


def model_config(package_dir: Path, manifest: Manifest | None, *, name: str, version: str,
                 diff_ids: list[str]) -> bytes:
    """The ModelPack config blob (canonical JSON) of a package. `manifest` None: a folder
    without manifest.json (the registry stores any folder): then only `name` and `version`."""
    descriptor: dict = {"name": name, "version": version}
    config: dict = {}
    if manifest is not None:
        whole_model = manifest.kind != "lora"  # an adapter's size and family are its base's
        descriptor = _descriptor(manifest)
        family = _family(package_dir) if whole_model else None
        if family:
            descriptor["family"] = family
        config = _weights_facts(package_dir, whole_model=whole_model)
        config["capabilities"] = {"inputTypes": ["text"], "outputTypes": ["text"]}  # causal LMs
    body = {"descriptor": descriptor, "config": config, "modelfs": {"type": "layers", "diffIds": diff_ids}}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _descriptor(manifest: Manifest) -> dict:
    ref = manifest.base_model
    base = ref.model_name or ("the tiny base shipped in base_model/" if ref.built_tiny else ref.name_or_path)
    what = {"lora": f"LoRA adapter (peft) for {base}", "merged": f"{base} with a LoRA adapter merged in",
            "base": f"country base model derived from {base}"}[manifest.kind]
    descriptor = {"name": f"{manifest.country}/{manifest.name}", "version": manifest.version,
                  "title": f"{manifest.country}/{manifest.name}:{manifest.version}",
                  "description": f"{what}; languages (ISO 639-3): {', '.join(manifest.languages)}; "
                                 f"made by countrytune, whose manifest.json lists every file's SHA-256"}
    created = _rfc3339(manifest.created)
    if created:
        descriptor["createdAt"] = created
    licence = (manifest.base_model.licence or "").strip()
    if SPDX_EXPRESSION.fullmatch(licence) and licence.lower() not in NOT_A_LICENCE:
        descriptor["licenses"] = [licence]  # the base's terms apply to what is derived from it
    return descriptor


def _rfc3339(value: str) -> str | None:
    """An ISO 8601 time with a zone as RFC 3339 in UTC; None when it is not one."""
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _weights_facts(package_dir: Path, *, whole_model: bool) -> dict:
    """format, precision and paramSize, each only when every weight file tells it."""
    weights = sorted(p for p in package_dir.rglob("*") if p.is_file()
                     and layer_type(p.relative_to(package_dir).as_posix())[0] == WEIGHT)
    facts: dict = {}
    formats = {WEIGHT_FORMATS[p.suffix.lower()] for p in weights}
    if len(formats) == 1:
        facts["format"] = formats.pop()
    headers = [_safetensors_header(p) for p in weights]
    if weights and all(h is not None for h in headers):
        dtypes = {t.get("dtype") for h in headers for k, t in h.items() if k != "__metadata__"}
        if dtypes and dtypes <= PRECISIONS.keys():
            facts["precision"] = ",".join(sorted(PRECISIONS[d] for d in dtypes))
        if whole_model:
            count = sum(_elements(t.get("shape")) for h in headers for k, t in h.items() if k != "__metadata__")
            size = _param_size(count)
            if size:
                facts["paramSize"] = size
    return facts


def _family(package_dir: Path) -> str | None:
    """The transformers `model_type` (llama, qwen2, ...) of a whole model's config.json."""
    try:
        model_type = json.loads((package_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) and model_type else None


def _safetensors_header(path: Path) -> dict | None:
    """The tensor table of a safetensors file, read without loading a tensor; None if not one."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_SAFETENSORS_HEADER:
                return None
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        return None
    return header


def _elements(shape) -> int:
    count = 1
    for dim in shape if isinstance(shape, list) else []:
        count *= int(dim)
    return count


def _param_size(count: int) -> str | None:
    """`<count><scale-prefix>` with at most one decimal (docs/config.md), e.g. 6.7B, 135M."""
    for prefix, scale in (("Q", 10**15), ("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        value = round(count / scale, 1)
        if value >= 1:  # after rounding: 999,960 is 1M, not 1000K
            return f"{value:.1f}".removesuffix(".0") + prefix
    return None
