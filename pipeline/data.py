"""Training data: read the sources, hold out evaluation documents, tokenise once, cache.

Tokenisation runs once per node: the local main process builds the cache under a fingerprint
of everything that changes its content (source files' sha256, tokenizer, task, fields, split)
and the other processes wait and read it (train.py wraps this in
`accelerator.local_main_process_first()`). The cache is written to a temporary name and
renamed, so two nodes sharing a file system never read half a file.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from pipeline.packing import TokenizedDocs
from pipeline.recipe import DataSource, TrainRecipe

CACHE_FORMAT = 1


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sha256: str
    source: str  # the recipe's path it came from


@dataclass(frozen=True)
class PreparedData:
    """Tokenised documents of both splits, plus what the run's lineage records."""

    train: TokenizedDocs
    eval: TokenizedDocs
    files: list[SourceFile]
    docs_read: int
    docs_rejected: dict[str, int]  # reason -> count, also written to the run directory
    cache_path: Path


def source_files(source: DataSource) -> list[Path]:
    """The files behind one source: a prep output dir gives its data/*.parquet."""
    path = Path(source.path)
    if (path / "data").is_dir() and (path / "stats.json").exists():
        files = sorted((path / "data").glob("*.parquet"))
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl", ".gz"))
    elif path.exists():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(source.path))
    if not files:
        raise UserError(f"data source {source.path}: no Parquet or JSONL files found "
                        f"(expected a `countrytune prep` output dir, a file, a dir or a glob)")
    return files


def _records(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON: {e}") from None


def is_eval_doc(doc_id: str, fraction: float) -> bool:
    """Held-out membership by a hash of the id: stable across runs, machines and orders."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def assistant_target_mask(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Tokens of a chat and which of them the loss may predict: the assistant's replies.

    The template is rendered for the whole chat and for each prefix ending before an
    assistant turn (with the generation prompt) and after it; the characters between are that
    reply, including the template's end-of-turn text, so the model learns to stop. Tokens are
    marked by their character offsets. This works with any prefix-consistent template, also
    those without `{% generation %}` markers (most real ones).
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                               add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(through)):
            raise UserError("the chat template is not prefix-consistent (rendering the first "
                            "turns differs from the start of the whole chat); set "
                            "tokenizer.chat_template to one that is")
        spans.append((len(before), len(through)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]]
    return enc["input_ids"], mask


def _tokenize_text(tokenizer, texts: list[str]) -> list[list[int]]:
    out = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [ids if ids and ids[-1] == eos else ids + [eos] for ids in out]


class _DocsBuilder:
    def __init__(self) -> None:
        self.tokens: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.langs: list[str] = []

    def add(self, ids: list[int], mask: list[bool], lang: str) -> None:
        self.tokens.append(np.asarray(ids, dtype=np.int32))
        self.targets.append(np.asarray(mask, dtype=bool))
        self.langs.append(lang)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        lengths = [len(t) for t in self.tokens]
        return {
            f"{prefix}_tokens": np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.int32),
            f"{prefix}_targets": (np.concatenate(self.targets) if self.targets
                                  else np.zeros(0, bool)),
            f"{prefix}_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            f"{prefix}_langs": np.asarray(self.langs, dtype=object).astype(str),
        }


def _tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()


def cache_root(recipe: TrainRecipe) -> Path:
    if recipe.data.cache_dir:
        return Path(recipe.data.cache_dir)
    env = os.environ.get("COUNTRYTUNE_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "countrytune") / "tokenized"


def _fingerprint(recipe: TrainRecipe, files: list[SourceFile], tokenizer) -> str:
    key = {
        "format": CACHE_FORMAT,
        "files": [[f.sha256, f.source] for f in files],
        "sources": [s.model_dump() for s in recipe.data.sources],
        "task": recipe.task,
        "eval_fraction": recipe.data.eval_fraction,
        "eval_max_docs_per_language": recipe.data.eval_max_docs_per_language,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _load_docs(z, prefix: str) -> TokenizedDocs:
    names = tuple(sorted(set(z[f"{prefix}_langs"].tolist())))
    index = {name: i for i, name in enumerate(names)}
    langs = np.asarray([index[x] for x in z[f"{prefix}_langs"].tolist()], dtype=np.int16)
    return TokenizedDocs(z[f"{prefix}_tokens"], z[f"{prefix}_targets"], z[f"{prefix}_offsets"],
                         langs, names)


def prepare_data(recipe: TrainRecipe, tokenizer, *, build: bool, progress=None) -> PreparedData:
    """Tokenised train/eval documents, from the cache or built now (when `build`).

    Processes that are not their node's local main call this with build=False after the main
    one finished, and read its cache.
    """
    files = [SourceFile(p, sha256_file(p), s.path) for s in recipe.data.sources
             for p in source_files(s)]
    path = cache_root(recipe) / f"{_fingerprint(recipe, files, tokenizer)}.npz"
    if not path.exists():
        if not build:
            raise RuntimeError(f"tokenised cache {path} missing after the local main process "
                               f"built it: is the cache directory shared and writable?")
        _build_cache(recipe, tokenizer, files, path, progress)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return PreparedData(_load_docs(z, "train"), _load_docs(z, "eval"), files,
                            meta["docs_read"], meta["rejected"], path)


def _build_cache(recipe: TrainRecipe, tokenizer, files: list[SourceFile], path: Path,
                 progress) -> None:
    train, held_out = _DocsBuilder(), _DocsBuilder()
    eval_per_lang: dict[str, int] = {}
    rejected: dict[str, int] = {}
    docs_read = 0
    pending: list[tuple[str, str, bool]] = []  # cpt texts are tokenised in batches

    def flush_text() -> None:
        if not pending:
            return
        for (text, lang, is_eval), ids in zip(pending, _tokenize_text(tokenizer, [p[0] for p in pending])):
            (held_out if is_eval else train).add(ids, [True] * len(ids), lang)
        pending.clear()

    by_source = {s.path: s for s in recipe.data.sources}
    for file in files:
        source = by_source[file.source]
        for n, rec in enumerate(_records(file.path)):
            docs_read += 1
            lang = rec.get(source.lang_field) or source.lang
            if not lang:
                rejected["no_language"] = rejected.get("no_language", 0) + 1
                continue
            doc_id = str(rec.get("id") or f"{file.sha256[:16]}:{n}")
            is_eval = (is_eval_doc(doc_id, recipe.data.eval_fraction)
                       and eval_per_lang.get(lang, 0) < recipe.data.eval_max_docs_per_language)
            if is_eval:
                eval_per_lang[lang] = eval_per_lang.get(lang, 0) + 1
            if recipe.task == "cpt":
                text = rec.get(source.text_field)
                if not isinstance(text, str) or not text.strip():
                    rejected["empty_text"] = rejected.get("empty_text", 0) + 1
                    continue
                pending.append((text, lang, is_eval))
                if len(pending) >= 512:
                    flush_text()
            else:
                messages = rec.get(source.messages_field)
                if not (isinstance(messages, list) and any(
                        isinstance(m, dict) and m.get("role") == "assistant" for m in messages)):
                    rejected["no_assistant_turn"] = rejected.get("no_assistant_turn", 0) + 1
                    continue
                ids, mask = assistant_target_mask(tokenizer, messages)
                (held_out if is_eval else train).add(ids, mask, lang)
            if progress is not None:
                progress(1)
        flush_text()
    if not train.tokens:
        raise UserError(f"no training documents in {', '.join(s.path for s in recipe.data.sources)}"
                        f" (read {docs_read}, rejected {rejected})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npz")  # unique across pods
    meta = json.dumps({"docs_read": docs_read, "rejected": rejected})
    np.savez(tmp, meta=np.asarray(meta), **train.arrays("train"), **held_out.arrays("eval"))
    os.replace(tmp, path)
