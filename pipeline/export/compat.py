"""Will vLLM's multi-LoRA serving accept this adapter? Checked at export, before anything ships.

Each rule mirrors a refusal in vLLM's LoRA loader (vllm/lora/peft_helper.py, lora_model.py);
the message says what vLLM would say and what to change.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from countrytune.errors import UserError
from countrytune.artifacts.manifest import Compatibility

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The only values the SERVER's `--max-lora-rank` takes (vLLM's PEFTHelper); an adapter's own
r may be any positive integer up to that value, so r=4 or r=24 adapters are servable."""

DEFAULT_MAX_LORA_RANK = 64
"""Deployment teams size LoRA slots for r <= 64 (vLLM's own default is 16)."""

KNOWN_TARGET_MODULES = frozenset({
    # Attention and MLP projections of the Llama / Mistral / Qwen / Gemma families, with
    # the fused names vLLM uses internally; vLLM checks against the served model's own list.
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj",
    "gate_proj", "up_proj", "down_proj", "gate_up_proj",
    "embed_tokens", "lm_head",
})

_LINEAR_KEY = re.compile(r"^(?P<module>.+)\.lora_[AB]\.weight$")
_EMBED_KEY = re.compile(r"^(?P<module>.+)\.lora_embedding_[AB]$")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor names, dtypes and shapes without loading any weights (or torch)."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:  # the format caps headers at 100 MB
            raise UserError(f"{path}: not a safetensors file (header length {length})")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def tensor_modules(header: dict[str, Any]) -> tuple[set[str], list[str]]:
    """(leaf module names that carry LoRA weights, names of any other tensors)."""
    modules, other = set(), []
    for key in header:
        match = _LINEAR_KEY.match(key) or _EMBED_KEY.match(key)
        if match:
            modules.add(match["module"].rsplit(".", 1)[-1])
        else:
            other.append(key)
    return modules, sorted(other)


def tokenizer_size(tokenizer_dir: Path) -> int | None:
    """Tokens the tokenizer can produce (vocabulary plus added tokens); None if unreadable."""
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)


def base_vocab_size(base_model_dir: Path | None) -> int | None:
    if base_model_dir is None or not (base_model_dir / "config.json").is_file():
        return None
    config = json.loads((base_model_dir / "config.json").read_text(encoding="utf-8"))
    size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return int(size) if size else None


def check_adapter(adapter_dir: Path, *, max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
                  tokenizer_dir: Path | None = None, tokenizer_differs: bool = False,
                  base_vocab: int | None = None) -> Compatibility:
    """Every reason vLLM multi-LoRA would refuse the adapter (problems), and softer warnings."""
    if max_lora_rank not in VLLM_LORA_RANKS:
        raise UserError(f"--max-lora-rank {max_lora_rank}: vLLM accepts only {list(VLLM_LORA_RANKS)}")
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    header = read_safetensors_header(adapter_dir / "adapter_model.safetensors")
    problems: list[str] = []
    warnings: list[str] = []

    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config['peft_type']}; vLLM serves only LoRA adapters")
    for key in ("r", "lora_alpha", "target_modules"):
        if config.get(key) in (None, "", []):
            problems.append(f"adapter_config.json has no {key}; vLLM requires it")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save is {config['modules_to_save']}; vLLM only supports "
                        f"modules_to_save being None (train those modules as LoRA targets, or "
                        f"export --merged)")
    if config.get("use_dora"):
        problems.append("use_dora is true; vLLM does not serve DoRA adapters")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}; vLLM needs bias 'none'")
    if config.get("trainable_token_indices"):
        problems.append("trainable_token_indices is set (new-token rows trained); vLLM refuses its "
                        "trainable_tokens_delta tensors: export it with --as-base, a country base with "
                        "the rows merged in, and train plain LoRAs on that")
    ranks = {int(config["r"])} if config.get("r") else set()
    ranks |= {int(r) for r in (config.get("rank_pattern") or {}).values()}
    for r in sorted(ranks):
        if r > VLLM_LORA_RANKS[-1]:
            problems.append(f"rank r={r} is above {VLLM_LORA_RANKS[-1]}, the largest --max-lora-rank "
                            f"vLLM takes; train with a smaller r")
        elif r > max_lora_rank:
            needed = next(v for v in VLLM_LORA_RANKS if v >= r)
            problems.append(f"rank r={r} is above --max-lora-rank {max_lora_rank}; serve with "
                            f"--max-lora-rank {needed} if the servers allow it, or train with a smaller r")

    modules, other = tensor_modules(header)
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        problems.append(f"tensors other than lora_A/lora_B/lora_embedding_A/B: {shown}; vLLM refuses them")
    declared = config.get("target_modules")
    if isinstance(declared, list):  # a string is a regex; the tensors say what it matched
        # Entries may be full paths (model.layers.0.mlp.up_proj): peft matches them as
        # suffixes and vLLM checks the leaf name, so compare leaves.
        modules |= {m.rsplit(".", 1)[-1] for m in declared}
    unknown = sorted(modules - KNOWN_TARGET_MODULES)
    if unknown:
        problems.append(f"target modules {unknown} are not projections vLLM knows "
                        f"({sorted(KNOWN_TARGET_MODULES)})")

    for key, info in header.items():
        if key.endswith("lora_embedding_A") and base_vocab and info["shape"][-1] != base_vocab:
            problems.append(f"{key} spans {info['shape'][-1]} tokens but the base vocabulary has "
                            f"{base_vocab}; vLLM refuses an embedding LoRA of another width")
            break

    tok = tokenizer_size(tokenizer_dir) if tokenizer_dir else None
    # `>` rather than `!=`: many bases pad the embedding matrix beyond the tokenizer (Qwen2.5:
    # 151,936 rows for 151,665 tokens), which is no new vocabulary.
    if tok is not None and base_vocab is not None and tok > base_vocab:
        problems.append(f"the tokenizer has {tok} tokens but the base model {base_vocab}: new tokens "
                        f"need new embedding rows, which a LoRA on the original base cannot carry; "
                        f"merge into a new country base (export --merged) and serve LoRAs on that")
    elif tokenizer_differs:
        warnings.append("the run's tokenizer differs from the base model's; vLLM serves every LoRA "
                        "with the base tokenizer, so make sure token ids are unchanged")
    if tok is None and base_vocab is None and tokenizer_differs:
        warnings.append("could not compare tokenizer and base vocabulary sizes (no tokenizer.json or "
                        "base config.json here)")
    return Compatibility(vllm_multi_lora=not problems, max_lora_rank=max_lora_rank,
                         problems=problems, warnings=warnings)
