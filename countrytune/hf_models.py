"""Every causal LM the project loads or builds goes through here, with Hugging Face's Hub
kernels off.

transformers >= 5.24 depends on the `kernels` package and loads models with
`use_kernels=True` by default. On CUDA, `model.train()` / `model.eval()` then call
`kernelize()`, which fetches kernels from the Hub (`kernels-community/rotary` ...): offline it
raises "not available in the local cache and Hugging Face Hub is in offline mode", online it
downloads code nobody reviewed, runs it, and replaces the layers our own kernels patch. A
country's node must never reach out, so every load passes `use_kernels=False`, and the entry
points also set USE_HUB_KERNELS=NO for anything a library loads on its own. On the CPU the flag
is set too (kernelize finds nothing to do there), which is what lets the CPU tests see a load
that forgets it: tests/test_no_hub_kernels.py.

transformers is imported inside the functions: the foundation must import without it.
"""

from __future__ import annotations

import os
from typing import Any

from countrytune.errors import UserError

# from_pretrained keyword that keeps the Hub's kernels out (transformers >= 5.24).
NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False}


def forbid_hub_kernels() -> None:
    """For the whole process: transformers reads USE_HUB_KERNELS at each load, so a model some
    library loads by itself (not through load_causal_lm) gets no Hub kernels either. Set, not
    defaulted: a user's USE_HUB_KERNELS=YES does not open the door."""
    os.environ["USE_HUB_KERNELS"] = "NO"


def _checked(model):
    if getattr(model, "use_kernels", False):
        raise RuntimeError(f"{type(model).__name__} was loaded with transformers' Hub kernels on; "
                           "countrytune never kernelizes from the Hub")
    return model


def load_causal_lm(name_or_path, **kwargs):
    """AutoModelForCausalLM.from_pretrained with the Hub's kernels off."""
    from transformers import AutoModelForCausalLM

    return _checked(AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs, **NO_HUB_KERNELS))


def causal_lm_from_config(config, **kwargs):
    """AutoModelForCausalLM.from_config (random weights); never kernelized, checked all the same."""
    from transformers import AutoModelForCausalLM

    return _checked(AutoModelForCausalLM.from_config(config, **kwargs))


def causal_lm_class(config):
    """The causal-LM class of a config, to build a model with `cls(config)` (under ZeRO-3,
    from_config builds inside deepspeed.zero.Init, whose collectives hang when only the main
    process builds)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


def load_weights(path: str, *, dtype, attn: str, revision: str | None = None,
                 trust_remote_code: bool = False):
    """A causal LM from safetensors only (no pickle file is ever unpickled), without a KV
    cache: what training, evaluation and export load a base or trained model with."""
    try:
        model = load_causal_lm(path, revision=revision, dtype=dtype, attn_implementation=attn,
                               use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {path!r} (safetensors weights required): {e}") from None
    model.config.use_cache = False
    return model


def for_inference(peft_model):
    """A peft model to generate or score with, not to train: in fp32 a LoRA adapter folded into
    the weights, which gives the same logits up to rounding and spares every token the
    adapter's own matmuls (bench/sampling.py: 1.27x the answers a second on 2 CPU cores, the
    same answers). Kept apart in bf16, where folding would round a small update away, and when
    the adapter trains more than LoRA matrices (new-token rows, whole modules)."""
    import torch

    config = peft_model.peft_config[peft_model.active_adapter]
    plain_lora = not getattr(config, "trainable_token_indices", None) and not getattr(config, "modules_to_save", None)
    if plain_lora and peft_model.get_base_model().dtype == torch.float32:
        return peft_model.merge_and_unload().eval()
    return peft_model.eval()


def load_tokenizer(name_or_path: str, revision: str | None, chat_template: str | None,
                   trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer {name_or_path!r}: {e}") from None
    if not tok.is_fast:
        raise UserError(f"tokenizer {name_or_path!r} has no fast (Rust) version; countrytune needs "
                        "its offsets to mask chat turns")
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding carries no loss; any id will do
    return tok
