"""The base model and its adapter: load a real model (safetensors only), build a tiny one,
wrap it in LoRA.

The same loading code serves a real model directory or hub id and the tiny model the demo
builds: a tiny model is written to the run directory first and then loaded from there like
any other checkpoint. The tokenizer is in tokenizer.py, the loss module in loss.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from countrytune.errors import UserError
from countrytune.hf_models import causal_lm_class, load_weights
from countrytune.artifacts.recipe import LoraSpec, ModelSpec, TinyModelSpec

log = logging.getLogger(__name__)

def build_tiny_model(spec: TinyModelSpec, vocab_size: int, max_positions: int, out_dir: Path,
                     *, bos_id: int | None, eos_id: int, pad_id: int) -> None:
    """Write a randomly initialised small model (config + safetensors) to `out_dir`."""
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "gemma": GemmaConfig}[spec.architecture]
    config = config_cls(
        vocab_size=vocab_size, hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=max(max_positions, 128),
        head_dim=spec.hidden_size // spec.num_heads, tie_word_embeddings=False,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    torch.manual_seed(spec.seed)
    # The class itself, not from_config: under ZeRO-3 from_config builds inside
    # deepspeed.zero.Init, whose collectives would hang with only the main process here.
    model = causal_lm_class(config)(config)
    model.save_pretrained(out_dir, safe_serialization=True)


def model_dtype(spec: ModelSpec, on_gpu: bool) -> torch.dtype:
    if spec.dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[spec.dtype]


def attn_implementation(spec: ModelSpec, on_gpu: bool, dtype: torch.dtype | None = None) -> str:
    """The attention transformers runs. auto: on a GPU, FlashAttention 2 when installed, else
    torch's own varlen FlashAttention on packed rows (pipeline/training/attention.py) when it runs on
    this device in half precision, else SDPA; SDPA on the CPU. All keep packed documents apart."""
    from pipeline.training.attention import VARLEN, register, varlen_problem

    choice = spec.attn_implementation
    if choice == "auto":
        if not on_gpu:
            return "sdpa"
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
        if dtype not in (torch.bfloat16, torch.float16):
            return "sdpa"  # the flash kernels take half precision only
        if (problem := varlen_problem()) is not None:
            log.warning("attention: SDPA with a dense mask on packed rows (slower): %s", problem)
            return "sdpa"
        choice = "varlen"
    if choice == "varlen":
        return register()  # known to transformers before the model is built
    return choice


def load_base_model(path: str, spec: ModelSpec, *, dtype: torch.dtype, attn: str):
    """The recipe's base from safetensors only (countrytune.hf_models.load_weights)."""
    return load_weights(path, dtype=dtype, attn=attn, revision=spec.revision,
                        trust_remote_code=spec.trust_remote_code)


def build_random_model(path: str, spec: ModelSpec, *, dtype: torch.dtype, attn: str, device,
                       seed: int):
    """The architecture of `path`'s config with random weights, built in `dtype` on `device`
    (an 8B model built in fp32 on the host would be 32 GB and minutes of initialisation)."""
    from transformers import AutoConfig

    from countrytune.hf_models import causal_lm_from_config

    try:
        config = AutoConfig.from_pretrained(path, revision=spec.revision,
                                            trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model.random_weights: cannot read the config of {path!r}: {e}") from None
    config.use_cache = False
    torch.manual_seed(seed)
    with torch.device(device):
        return causal_lm_from_config(config, dtype=dtype, attn_implementation=attn)


def config_sha256(model) -> str:
    return hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True,
                                     default=str).encode()).hexdigest()


def add_lora(model, spec: LoraSpec, seed: int, trainable_tokens: list[int] | None = None):
    """Wrap the base model with a peft LoRA adapter; only the adapter trains (and the rows of
    `trainable_tokens`, when given)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=spec.target_modules, use_rslora=spec.use_rslora, use_dora=spec.use_dora,
        bias="none", task_type="CAUSAL_LM", trainable_token_indices=trainable_tokens or None)
    torch.manual_seed(seed)  # LoRA A is initialised randomly: same seed, same start
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"lora.target_modules: {e}") from None
