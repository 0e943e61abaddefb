"""The trainer's loss (decoder + head read directly, so the fused kernel can skip the logits)
equals each architecture's own `model(...).loss`, output transforms included: Gemma-2's
final-logit soft-capping, Cohere's logit scale, Granite's logit scaling."""

from __future__ import annotations

import pytest
import torch

from pipeline.training.loss import TokenLossModel

# Small caps and strong scales, so that leaving a transform out changes the loss visibly
# (random 64-wide models give logits near 0, where tanh(x/30)*30 is x).
ARCHS = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "gemma": ("GemmaConfig", {}),
    "gemma2": ("Gemma2Config", {"final_logit_softcapping": 0.05}),
    "gemma3_text": ("Gemma3TextConfig", {"final_logit_softcapping": 0.05}),
    "cohere": ("CohereConfig", {"logit_scale": 8.0}),
    "granite": ("GraniteConfig", {"logits_scaling": 0.125}),
}


def _model(arch: str):
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    name, extra = ARCHS[arch]
    config = getattr(transformers, name)(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config).eval()
    with torch.no_grad():  # logits large enough for the transforms to matter
        model.get_output_embeddings().weight.mul_(20)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("ce", [None, "reference"])
def test_first_step_loss_equals_the_models_own(arch, ce):
    peft_model = _model(arch)
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)  # aligned, as packing makes them
    positions = torch.arange(24).expand(2, -1)
    with torch.no_grad():
        ours = TokenLossModel(peft_model, ce)(ids, labels, positions) / (labels != -100).sum()
        theirs = peft_model(input_ids=ids, labels=ids).loss
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
        if ARCHS[arch][1]:  # negative control: the same loss without the transform differs
            plain = TokenLossModel(peft_model, ce)
            plain.scale, plain.softcap = 1.0, None
            untransformed = plain(ids, labels, positions) / (labels != -100).sum()
            assert abs(float(untransformed) - float(theirs)) > 1e-3
