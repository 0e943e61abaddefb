"""What a run trains, and how those weights are saved, checkpointed and set against the base.

Two methods, one interface for the loop, the checkpoints and the held-out evaluation:

  AdapterWeights (method: lora)  a peft LoRA adapter on a frozen base; the run writes RUN/adapter
  FullWeights    (method: full)  every weight of the model; the run writes RUN/model, a complete
                                 Hugging Face model directory (weights, config, tokenizer)

Under ZeRO-3 every process holds a slice of each parameter, so saving gathers them first (the
known cause of empty adapter files elsewhere) and loading scatters them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from countrytune.atomic import atomic_dir

FULL_CHECKPOINT_FILE = "model.safetensors"


def _gathered(params, modifier_rank: int | None = None):
    """Whole tensors for the block under ZeRO-3 (a collective: every process enters it);
    a no-op otherwise. modifier_rank: the process whose writes are scattered back."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
    return nullcontext()


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """The trainable weights, whole and on CPU, on every process (a collective under ZeRO-3)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with _gathered([p for _, p in named]):
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}


class AdapterWeights:
    """method: lora. Only the adapter trains; the base is the same model with it switched off."""

    method = "lora"
    output_name = "adapter"

    def __init__(self, peft_model) -> None:
        self.module = peft_model  # what the optimiser and the loss see

    @property
    def causal_lm(self):
        """The Hugging Face model the adapter wraps (decoder, output head, config)."""
        return self.module.get_base_model()

    def save(self, out_dir: Path, is_main: bool, tokenizer=None) -> None:
        """The adapter in peft format, from any ZeRO stage. All processes must call it."""
        from peft import get_peft_model_state_dict

        state = trainable_state_dict(self.module)
        if is_main:
            adapter_state = get_peft_model_state_dict(self.module, state_dict=state)
            empty = [k for k, v in adapter_state.items() if v.numel() == 0]
            if not adapter_state or empty:
                raise RuntimeError(f"adapter state is empty or has empty tensors ({empty[:3]}): "
                                   "parameters were not gathered")
            with atomic_dir(out_dir) as tmp:  # a kill mid-save leaves the previous adapter whole
                # Only the adapter that trains: a DPO run's frozen reference copy is not its output.
                self.module.save_pretrained(tmp, state_dict=state, safe_serialization=True,
                                            selected_adapters=["default"])

    def save_to_checkpoint(self, ckpt: Path, is_main: bool, engine) -> None:
        # Kept even beside a DeepSpeed checkpoint: it is small, and `countrytune eval` can
        # score any checkpoint's adapter.
        self.save(ckpt / self.output_name, is_main)

    def load_from_checkpoint(self, ckpt: Path, engine) -> None:
        if engine is not None:
            return  # DeepSpeed's own checkpoint restored the weights
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.module, load_file(ckpt / self.output_name / "adapter_model.safetensors"))

    @contextmanager
    def base_for_scoring(self, untouched: bool) -> Iterator:
        """The base model: the adapter switched off, which is the base exactly."""
        with self.module.disable_adapter():
            yield self.module


class FullWeights:
    """method: full. Every weight trains; the base is the model before step 1, or reloaded."""

    method = "full"
    output_name = "model"

    def __init__(self, model, base_path: str, reload_base) -> None:
        self.module = model
        self.base_path = base_path
        self._reload_base = reload_base  # () -> the base as loaded before training

    @property
    def causal_lm(self):
        return self.module

    def full_state_dict(self, is_main: bool) -> dict[str, torch.Tensor]:
        """Every weight, whole, on CPU, on the main process only (others get {}).

        One parameter is gathered at a time: gathering them all at once would put the whole
        model on every process, which ZeRO-3 exists to avoid. Tied weights appear once
        (named_parameters), as save_pretrained expects."""
        state: dict[str, torch.Tensor] = {}
        for name, p in self.module.named_parameters():
            with _gathered([p]):
                if is_main:
                    state[name] = p.detach().to("cpu", copy=True).contiguous()
        if is_main:
            params = set(state)
            persistent = set(self.module.state_dict().keys())
            for name, buf in self.module.named_buffers():
                if name in persistent and name not in params:
                    state[name] = buf.detach().to("cpu", copy=True).contiguous()
        return state

    def save(self, out_dir: Path, is_main: bool, tokenizer=None) -> None:
        """A complete Hugging Face model directory (safetensors, config, tokenizer): what
        `vllm serve`, from_pretrained and `countrytune export --as-base` read."""
        state = self.full_state_dict(is_main)
        if is_main:
            with atomic_dir(out_dir) as tmp:
                self.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)

    def save_to_checkpoint(self, ckpt: Path, is_main: bool, engine) -> None:
        if engine is not None:
            # DeepSpeed's checkpoint holds every weight (fp32 master copies, partitioned);
            # a gathered copy per checkpoint would cost the model's size each time.
            return
        if is_main:
            from safetensors.torch import save_file

            save_file(trainable_state_dict(self.module), ckpt / FULL_CHECKPOINT_FILE)

    def load_from_checkpoint(self, ckpt: Path, engine) -> None:
        if engine is not None:
            return
        from safetensors.torch import load_file

        state = load_file(ckpt / FULL_CHECKPOINT_FILE)
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                p.copy_(state[name])

    @contextmanager
    def base_for_scoring(self, untouched: bool) -> Iterator:
        """Before step 1 the model is the base; after, the base is loaded again from disk
        (once per run at most: a resumed run reuses the base scores of its first attempt)."""
        if untouched:
            yield self.module
            return
        base = self._reload_base().to(next(self.module.parameters()).device)
        try:
            yield base
        finally:
            del base
