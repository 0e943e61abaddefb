"""Training data: read the sources, hold out evaluation documents, tokenise once, cache.

Tokenisation runs once per node: the local main process builds the cache under a fingerprint
of everything that changes its content (source files' sha256, tokenizer, task, fields, split)
and the other processes wait and read it (train.py wraps this in
`accelerator.local_main_process_first()`). Only the job's main process hashes the source files
and hands the hashes to the others (`hash_sources`), so a corpus is read once for that, not
once per process. The cache is a folder of flat arrays written as they are produced (the
builder holds one batch, not the corpus) and renamed into place whole; every process
memory-maps it, so the corpus's tokens sit once in the node's page cache, not in each
process's memory.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from countrytune.atomic import atomic_dir
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from countrytune.artifacts.chat import check_chat
from countrytune.artifacts.preference import check_pair, pair_messages
from countrytune.artifacts.prep_output import is_prep_output, open_prep_output
from pipeline.training.packing import TokenizedDocs
from countrytune.artifacts.recipe import DataSource, TrainRecipe

# 2: a folder of memory-mappable arrays (1 was one .npz); 3: + each document's source;
# 4: rejects no longer take held-out slots (the split can differ from 3's)
CACHE_FORMAT = 4


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
    if is_prep_output(path):  # prep or sft-data output
        files = open_prep_output(path, f"data source {source.path}").data_files()
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
        from countrytune.parquet import row_group_batches

        for batch in row_group_batches(path, 4096):
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


class _DocsWriter:
    """Appends documents of one split to flat files: tokens (int32), targets (uint8), then the
    offsets and languages (small) when closed."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder, self.prefix = folder, prefix
        self.tokens = (folder / f"{prefix}_tokens.bin").open("wb")
        self.targets = (folder / f"{prefix}_targets.bin").open("wb")
        self.offsets: list[int] = [0]
        self.langs: list[str] = []
        self.sources: list[int] = []

    def add(self, ids: list[int], mask: list[bool], lang: str, source: int) -> None:
        self.tokens.write(np.asarray(ids, dtype=np.int32).tobytes())
        self.targets.write(np.asarray(mask, dtype=np.uint8).tobytes())
        self.offsets.append(self.offsets[-1] + len(ids))
        self.langs.append(lang)
        self.sources.append(source)

    def __len__(self) -> int:
        return len(self.langs)

    def close(self) -> None:
        self.tokens.close()
        self.targets.close()
        np.save(self.folder / f"{self.prefix}_offsets.npy", np.asarray(self.offsets, dtype=np.int64))
        np.save(self.folder / f"{self.prefix}_langs.npy", np.asarray(self.langs, dtype=str))
        np.save(self.folder / f"{self.prefix}_sources.npy", np.asarray(self.sources, dtype=np.int16))


def _mapped(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


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
        "sources": [s.model_dump(exclude={"weight"}) for s in recipe.data.sources],  # weights: sampling only
        "task": recipe.task,
        "eval_fraction": recipe.data.eval_fraction,
        "eval_max_docs_per_language": recipe.data.eval_max_docs_per_language,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _load_docs(folder: Path, prefix: str, paired: bool) -> TokenizedDocs:
    lang_of_doc = np.load(folder / f"{prefix}_langs.npy", allow_pickle=False)
    names = tuple(sorted(set(lang_of_doc.tolist())))
    index = {name: i for i, name in enumerate(names)}
    langs = np.asarray([index[x] for x in lang_of_doc.tolist()], dtype=np.int16)
    targets = _mapped(folder / f"{prefix}_targets.bin", np.uint8).view(bool)
    return TokenizedDocs(_mapped(folder / f"{prefix}_tokens.bin", np.int32), targets,
                         np.load(folder / f"{prefix}_offsets.npy", allow_pickle=False), langs, names,
                         np.load(folder / f"{prefix}_sources.npy", allow_pickle=False), paired)


def list_sources(recipe: TrainRecipe) -> list[tuple[Path, str]]:
    """(file, the recipe's source path it came from) for every training input (cheap)."""
    return [(p, s.path) for s in recipe.data.sources for p in source_files(s)]


def hash_sources(recipe: TrainRecipe) -> list[SourceFile]:
    """The sha256 of every source file: run once per job (the main process), then shared."""
    return [SourceFile(p, sha256_file(p), source) for p, source in list_sources(recipe)]


def prepare_data(recipe: TrainRecipe, tokenizer, *, build: bool, files: list[SourceFile] | None = None,
                 progress=None) -> PreparedData:
    """Tokenised train/eval documents, from the cache or built now (when `build`).

    Processes that are not their node's local main call this with build=False after the main
    one finished, and read its cache. `files` are the hashed sources (hash_sources), computed
    here when not given.
    """
    files = files if files is not None else hash_sources(recipe)
    path = cache_root(recipe) / _fingerprint(recipe, files, tokenizer)
    if not (path / "meta.json").is_file():
        if not build:
            raise RuntimeError(f"tokenised cache {path} missing after the local main process "
                               f"built it: is the cache directory shared and writable?")
        _build_cache(recipe, tokenizer, files, path, progress)
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    paired = meta.get("paired", False)
    return PreparedData(_load_docs(path, "train", paired), _load_docs(path, "eval", paired), files,
                        meta["docs_read"], meta["rejected"], path)


def _build_cache(recipe: TrainRecipe, tokenizer, files: list[SourceFile], path: Path,
                 progress) -> None:
    with atomic_dir(path) as folder:  # a killed build leaves a temporary folder, never half a cache
        train, held_out = _DocsWriter(folder, "train"), _DocsWriter(folder, "eval")
        docs_read, rejected = _tokenize_sources(recipe, tokenizer, files, train, held_out, progress)
        train.close()
        held_out.close()
        if not len(train):
            raise UserError(f"no training documents in {', '.join(s.path for s in recipe.data.sources)}"
                            f" (read {docs_read}, rejected {rejected})")
        (folder / "meta.json").write_text(json.dumps({"docs_read": docs_read, "rejected": rejected,
                                                      "paired": recipe.task == "dpo"}), encoding="utf-8")


def _tokenize_sources(recipe: TrainRecipe, tokenizer, files: list[SourceFile], train: _DocsWriter,
                      held_out: _DocsWriter, progress) -> tuple[int, dict[str, int]]:
    eval_per_lang: dict[str, int] = {}
    rejected: dict[str, int] = {}
    docs_read = 0
    pending: list[tuple[str, str, bool, int]] = []  # cpt texts are tokenised in batches

    def flush_text() -> None:
        if not pending:
            return
        for (text, lang, is_eval, index), ids in zip(pending, _tokenize_text(tokenizer, [p[0] for p in pending])):
            (held_out if is_eval else train).add(ids, [True] * len(ids), lang, index)
        pending.clear()

    by_source = {s.path: (i, s) for i, s in enumerate(recipe.data.sources)}
    for file in files:
        index, source = by_source[file.source]
        for n, rec in enumerate(_records(file.path)):
            docs_read += 1
            lang = rec.get(source.lang_field) or source.lang
            if not lang:
                rejected["no_language"] = rejected.get("no_language", 0) + 1
                continue
            if recipe.task == "cpt":
                text = rec.get(source.text_field)
                problem = None if isinstance(text, str) and text.strip() else ("empty_text", "")
            elif recipe.task == "dpo":
                problem = check_pair(rec)
            else:
                problem = check_chat(rec.get(source.messages_field))
            if problem is not None:
                rejected[problem[0]] = rejected.get(problem[0], 0) + 1
                continue
            # A held-out slot goes to a kept document only: a reject must not shrink the eval set.
            doc_id = str(rec.get("id") or f"{file.sha256[:16]}:{n}")
            is_eval = (is_eval_doc(doc_id, recipe.data.eval_fraction)
                       and eval_per_lang.get(lang, 0) < recipe.data.eval_max_docs_per_language)
            if is_eval:
                eval_per_lang[lang] = eval_per_lang.get(lang, 0) + 1
            if recipe.task == "cpt":
                pending.append((text, lang, is_eval, index))
                if len(pending) >= 512:
                    flush_text()
            elif recipe.task == "dpo":  # two documents, side by side: chosen, then rejected
                for side in ("chosen", "rejected"):
                    ids, mask = assistant_target_mask(tokenizer, pair_messages(rec, side))
                    (held_out if is_eval else train).add(ids, mask, lang, index)
            else:
                ids, mask = assistant_target_mask(tokenizer, rec[source.messages_field])
                (held_out if is_eval else train).add(ids, mask, lang, index)
            if progress is not None:
                progress(1)
        flush_text()
    return docs_read, rejected
