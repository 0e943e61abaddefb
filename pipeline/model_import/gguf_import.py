"""A GGUF file -> a plain Hugging Face model directory that the trainer loads unchanged.

transformers reads GGUF (`from_pretrained(dir, gguf_file=...)`) and dequantises every tensor
to float, but the model it returns is flagged as quantised and refuses `save_pretrained`. So
the dequantised tensors are moved into a model built from the same config without the GGUF
flags, and saved as safetensors with the tokenizer (and its chat template, when the GGUF has
one). Before the directory is moved into place, it is loaded back and its logits compared with
the GGUF model's on a probe text, and its tokenizer's ids with the GGUF tokenizer's.

Everything is written into a temporary sibling of the target and renamed at the end: a failed
or killed import leaves no half-written model directory.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from countrytune.software import MODEL_IMPORT, software_versions
from countrytune.atomic import check_new_folder
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from countrytune.artifacts.provenance import (
    write_provenance,
    Licence,
    Provenance,
    Quantisation,
    SourceRef,
    WrittenFile,
)

GGUF_MAGIC = b"GGUF"
# Mixed scripts on purpose: the tokenizer check must cover more than ASCII English.
PROBE_TEXT = "Kula badhé tindak dhateng peken énjing menika. The market opens at 7 a.m. — 市場"
# GGUF `general.license` values -> the names manifests use.
LICENCE_NAMES = {"apache-2.0": "Apache-2.0", "mit": "MIT", "gemma": "Gemma Terms of Use",
                 "llama3": "Llama 3 Community License", "llama3.1": "Llama 3.1 Community License",
                 "llama3.2": "Llama 3.2 Community License", "cc-by-4.0": "CC-BY-4.0"}


def read_header(path: Path):
    """The GGUF reader for `path`, with clear errors for files that are not (whole) GGUF."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors on damage
        raise UserError(f"{path}: the GGUF file is truncated or damaged ({type(e).__name__}: {e})") from None
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise UserError(f"{path}: the GGUF file is truncated ({size:,} bytes; its tensors need {end:,})")
    return reader


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def supported_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))


def _quantisation(reader, dtype_name: str) -> Quantisation:
    from gguf import LlamaFileType

    file_type = _field(reader, "general.file_type")
    try:
        name = LlamaFileType(int(file_type)).name if file_type is not None else "unknown"
    except ValueError:
        name = f"file_type {file_type}"
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return Quantisation(file_type=name, tensor_types=dict(sorted(types.items())), written_dtype=dtype_name)


def _licence(reader, licence: Licence | None) -> Licence:
    if licence is not None:
        return licence
    raw = _field(reader, "general.license")
    if raw:
        return Licence(name=LICENCE_NAMES.get(str(raw).lower(), str(raw)), source="GGUF header general.license")
    return Licence(name="unknown", source="none found: check the model's terms before use")


def _plain_model(gguf_model, dtype):
    """The same weights in a model built from the config without GGUF's quantisation flags."""
    import torch
    from countrytune.hf_models import causal_lm_from_config

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = causal_lm_from_config(config, dtype=dtype)
    state = {k: v.to(dtype) for k, v in gguf_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise UserError(f"the GGUF's tensors do not fit the {config.model_type} config: missing "
                        f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    return model


def _verify(tmp: Path, gguf_model, gguf_tokenizer, dtype) -> None:
    """Load the written directory back; its tokenizer and logits must equal the GGUF model's."""
    import torch
    from transformers import AutoTokenizer

    from countrytune.hf_models import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(tmp)
    ids = gguf_tokenizer(PROBE_TEXT)["input_ids"]
    if tokenizer(PROBE_TEXT)["input_ids"] != ids:
        raise RuntimeError("the written tokenizer encodes the probe text differently from the GGUF's")
    model = load_causal_lm(tmp, dtype=dtype, use_safetensors=True)
    batch = torch.tensor([ids])
    with torch.no_grad():
        got, want = model(batch).logits, gguf_model.to(dtype)(batch).logits
    if not torch.equal(got, want):
        raise RuntimeError(f"the written model's logits differ from the GGUF's "
                           f"(max {float((got - want).abs().max()):.3g})")


def import_gguf(gguf_path: Path, to: Path, *, source: SourceRef, licence: Licence | None = None,
                licence_file: Path | None = None, dtype_name: str = "float32",
                log: Callable[[str], None] = print) -> Provenance:
    """Write `to` (a new directory) from the GGUF at `gguf_path`; returns its provenance.

    `source` says where the file came from (its sha256 is filled in by the caller, who may
    have assembled it from chunks)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from countrytune.hf_models import load_causal_lm

    check_new_folder(to)
    reader = read_header(gguf_path)
    arch = _field(reader, "general.architecture")
    if arch not in supported_architectures():
        raise UserError(f"{gguf_path}: GGUF architecture {arch!r} is not one transformers can read "
                        f"(it reads {', '.join(supported_architectures())})")
    licence = _licence(reader, licence)
    quant = _quantisation(reader, dtype_name)
    name = str(_field(reader, "general.name") or gguf_path.stem)
    source = source.model_copy(update={"gguf_name": name})
    del reader  # its memory map

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.parent / f".{to.name}.importing-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        hf_logging.disable_progress_bar()
        log(f"reading {gguf_path.name} ({arch}, {quant.file_type}) and dequantising to {dtype_name}")
        folder, file = str(gguf_path.parent), gguf_path.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
            gguf_model = load_causal_lm(folder, gguf_file=file, dtype=torch.float32)
        except (ValueError, KeyError, NotImplementedError, OSError) as e:
            raise UserError(f"{gguf_path}: transformers cannot load this GGUF: {type(e).__name__}: {e}") from None
        _plain_model(gguf_model, dtype).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if licence_file is not None:
            target = "LICENSE" + (licence_file.suffix if licence_file.suffix in (".html", ".md", ".txt") else "")
            shutil.copyfile(licence_file, tmp / target)
            licence = licence.model_copy(update={"file": target})
        log("checking the written model against the GGUF (tokenizer ids, logits)")
        _verify(tmp, gguf_model, tokenizer, dtype)
        files = [WrittenFile(path=p.relative_to(tmp).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
                 for p in sorted(tmp.rglob("*")) if p.is_file()]
        provenance = Provenance(
            model_name=_model_name(source, name), architecture=gguf_model.config.model_type,
            source=source, licence=licence, quantisation=quant,
            chat_template=bool(getattr(tokenizer, "chat_template", None)),
            imported=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            software=software_versions(MODEL_IMPORT), files=files)
        write_provenance(tmp, provenance)
        if to.exists():
            to.rmdir()  # an empty directory: check_new_folder allowed it
        os.rename(tmp, to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return provenance


def _model_name(source: SourceRef, gguf_name: str) -> str:
    stem = Path(source.files[0]).name.split(".")[0] if source.files else gguf_name
    return stem if stem and stem.lower() not in ("model", "ggml-model") else gguf_name
