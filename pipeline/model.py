"""Builders between the recipe and the objects the loop uses: tokenizer, base model, adapter,
and the module whose forward returns the summed token loss.

The same loading code serves a real model directory or hub id and the tiny model the demo
builds: a tiny model is written to the run directory first and then loaded from there like
any other checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from countrytune.errors import UserError
from pipeline.recipe import LoraSpec, ModelSpec, TinyModelSpec

log = logging.getLogger(__name__)

# A minimal ChatML template for tokenizers built here (real models bring their own).
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts, vocab_size: int, out_dir: Path):
    """A byte-level BPE trained on the training text, saved as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                  pad_token="<|pad|>", bos_token=None)
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


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


def build_tiny_model(spec: TinyModelSpec, vocab_size: int, max_positions: int, out_dir: Path,
                     *, bos_id: int | None, eos_id: int, pad_id: int) -> None:
    """Write a randomly initialised small model (config + safetensors) to `out_dir`."""
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

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
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
    model.save_pretrained(out_dir, safe_serialization=True)


def model_dtype(spec: ModelSpec, on_gpu: bool) -> torch.dtype:
    if spec.dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[spec.dtype]


def attn_implementation(spec: ModelSpec, on_gpu: bool) -> str:
    if spec.attn_implementation != "auto":
        return spec.attn_implementation
    if on_gpu:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_base_model(path: str, spec: ModelSpec, *, dtype: torch.dtype, attn: str):
    """AutoModelForCausalLM from safetensors only (no pickle files are ever unpickled)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=spec.revision, dtype=dtype, attn_implementation=attn,
            use_safetensors=True, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {path!r} (safetensors weights required): {e}") from None
    model.config.use_cache = False
    return model


def config_sha256(model) -> str:
    return hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True,
                                     default=str).encode()).hexdigest()


def add_lora(model, spec: LoraSpec, seed: int):
    """Wrap the base model with a peft LoRA adapter; only the adapter trains."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=spec.target_modules, use_rslora=spec.use_rslora, use_dora=spec.use_dora,
        bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # LoRA A is initialised randomly: same seed, same start
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"lora.target_modules: {e}") from None


class TokenLossModel(nn.Module):
    """The model as the loop sees it: forward returns the summed loss over target tokens.

    Returning a sum (not a mean) lets the loop divide by the target tokens of the whole
    optimiser step, across accumulation and processes. The output head and loss go through
    `linear_cross_entropy_sum`: the fused kernel never materialises the full logits; the
    reference computes them in fp32. Wrapping the peft model in one module means DDP and
    DeepSpeed see a single forward, so ZeRO-3 gathers every submodule's parameters through its
    own hooks; the output head is read directly, so it is gathered explicitly.
    """

    def __init__(self, peft_model, ce_implementation: str | None) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.ce_implementation = ce_implementation
        self.scale, self.softcap = output_transform_of(peft_model.get_base_model().config)

    def forward(self, input_ids, labels, position_ids):
        from pipeline.kernels.cross_entropy import output_transform

        base = self.peft_model.get_base_model()
        hidden = base.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                    use_cache=False).last_hidden_state
        head = base.get_output_embeddings()
        if self.ce_implementation is None:  # the plain path: full logits, in fp32
            logits = output_transform(head(hidden), scale=self.scale, softcap=self.softcap).float()
            return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="sum")
        from pipeline.kernels import gathered_for_read, linear_cross_entropy_sum

        with gathered_for_read(head.weight):
            return linear_cross_entropy_sum(hidden, head.weight, labels, scale=self.scale,
                                            softcap=self.softcap, implementation=self.ce_implementation)


# Config attributes that change the head's output before the loss, per model family. The loss
# above reads the decoder and the head directly (so the fused kernel can skip the logits), so it
# must apply them itself. tests/test_loss_transforms.py checks the result against each model's
# own loss.
_MULTIPLY = ("logit_scale",)             # Cohere, Cohere2
_DIVIDE = ("logits_scaling",)            # Granite, GraniteMoE
_SOFTCAP = ("final_logit_softcapping",)  # Gemma-2 (30.0); Gemma-3 sets it to None


def output_transform_of(config) -> tuple[float, float | None]:
    """(scale, softcap) the model's own forward applies to its logits."""
    config = getattr(config, "text_config", None) or config
    scale, softcap = 1.0, None
    for name in _MULTIPLY:
        if getattr(config, name, None) is not None:
            scale *= float(getattr(config, name))
    for name in _DIVIDE:
        if getattr(config, name, None) is not None:
            scale /= float(getattr(config, name))
    for name in _SOFTCAP:
        if getattr(config, name, None) is not None:
            softcap = float(getattr(config, name))
    return scale, softcap
