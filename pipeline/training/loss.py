"""The module the loop trains: forward returns the summed loss over target tokens, with each
model's own output transform, through the plain or the fused cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

class TokenLossModel(nn.Module):
    """The model as the loop sees it: forward returns the summed loss over target tokens.

    Returning a sum (not a mean) lets the loop divide by the target tokens of the whole
    optimiser step, across accumulation and processes. The output head and loss go through
    `linear_cross_entropy_sum`: the fused kernel never materialises the full logits; the
    reference computes them in fp32. Wrapping the trained model in one module means DDP and
    DeepSpeed see a single forward, so ZeRO-3 gathers every submodule's parameters through its
    own hooks; the output head is read directly, so it is gathered explicitly.
    """

    def __init__(self, model, ce_implementation: str | None) -> None:
        super().__init__()
        self.model = model  # a peft model (method: lora) or the causal LM itself (method: full)
        self.ce_implementation = ce_implementation
        self.scale, self.softcap = output_transform_of(self.causal_lm().config)

    def causal_lm(self):
        get_base = getattr(self.model, "get_base_model", None)  # peft's; HF models have none
        return get_base() if get_base is not None else self.model

    def forward(self, input_ids, labels, position_ids):
        from pipeline.training.kernels.cross_entropy import output_transform

        base = self.causal_lm()
        hidden = decoder_hidden(base, input_ids, position_ids)
        head = base.get_output_embeddings()
        if self.ce_implementation is None:  # the plain path: full logits, in fp32
            logits = output_transform(head(hidden), scale=self.scale, softcap=self.softcap).float()
            return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="sum")
        from pipeline.training.kernels import gathered_for_read, linear_cross_entropy_sum

        if not isinstance(head, nn.Linear):  # e.g. peft's trainable-token rows wrap the head
            raise RuntimeError(f"the fused cross-entropy needs a plain Linear output head, got "
                               f"{type(head).__name__}")

        with gathered_for_read(head.weight):
            return linear_cross_entropy_sum(hidden, head.weight, labels, scale=self.scale,
                                            softcap=self.softcap, implementation=self.ce_implementation)


def decoder_hidden(causal_lm, input_ids, position_ids):
    """The decoder's last hidden states of packed rows (documents kept apart by their positions)."""
    from pipeline.training.attention import PACKED_ATTENTION, packed_forward, packed_kwargs

    # Attention that takes the documents' boundaries gets them once per micro-batch (one host
    # sync), not rebuilt from the positions in every layer.
    boundaries = packed_kwargs(position_ids) if causal_lm.config._attn_implementation in PACKED_ATTENTION else {}
    with packed_forward(bool(boundaries)):
        return causal_lm.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                       use_cache=False, **boundaries).last_hidden_state


def target_tokens(batch) -> int:
    """What a token loss is divided by: the tokens it predicts."""
    return int((batch["labels"] != -100).sum())


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
