"""The adapter's weights from any ZeRO stage: gathered to save (final adapter and every
checkpoint), scattered back to load."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from countrytune.atomic import atomic_dir


@contextmanager
def _gathered(params):
    """Under ZeRO-3 every process holds a slice of each parameter: gather the full tensors for
    reading (the known cause of empty adapter files elsewhere). A no-op otherwise."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
    else:
        yield


def trainable_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's full weights on CPU, on every process (a collective under ZeRO-3)."""
    named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    with _gathered([p for _, p in named]):
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}


def save_adapter(peft_model, out_dir: Path, is_main: bool) -> None:
    """Save the adapter in peft format from any ZeRO stage. All processes must call it."""
    from peft import get_peft_model_state_dict

    state = trainable_state_dict(peft_model)
    if is_main:
        adapter_state = get_peft_model_state_dict(peft_model, state_dict=state)
        empty = [k for k, v in adapter_state.items() if v.numel() == 0]
        if not adapter_state or empty:
            raise RuntimeError(f"adapter state is empty or has empty tensors ({empty[:3]}): "
                               "parameters were not gathered")
        with atomic_dir(out_dir) as tmp:  # a kill mid-save leaves the previous adapter whole
            peft_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)


def load_adapter_weights(peft_model, adapter_dir: Path) -> None:
    """Load saved trainable weights into the live (possibly ZeRO-3-partitioned) model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(adapter_dir / "adapter_model.safetensors")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            set_peft_model_state_dict(peft_model, state)
    else:
        set_peft_model_state_dict(peft_model, state)
