"""The fused LoRA in PyTorch ops ("torch": base GEMM, then the low-rank product added into its
output in place) against peft's forward: each gradient, and a whole model's loss curve.

No Triton here: this path runs on any device, the CPU included. fp32: both sides compute the
same sums in another order (~1e-6 observed; 2e-5 allowed, as for the Triton kernel). bf16: the
fused path runs the low-rank branch in bf16 (as autocast would) where peft runs it in fp32
adapters' precision, so results differ by a few bf16 roundoffs (2^-8 = 3.9e-3): a norm-relative
1.5e-2 still catches a wrong term, which is off by order 1.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.training.kernels import KernelsConfig, apply_kernels
from pipeline.training.kernels.lora_linear import fused_lora_linear, lora_linear_reference


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype,adapter_dtype,tol", [(torch.float32, torch.float32, 2e-5),
                                                     (torch.bfloat16, torch.float32, 1.5e-2),
                                                     (torch.bfloat16, torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_torch_fused_lora_matches_peft_forward_and_every_gradient(dtype, adapter_dtype, tol, with_bias):
    torch.manual_seed(0)
    x = torch.randn(3, 37, 67).to(dtype).requires_grad_()
    weight = (torch.randn(45, 67) / 8).to(dtype)
    bias = torch.randn(45).to(dtype) if with_bias else None
    lora_a = (torch.randn(8, 67) / 8).to(adapter_dtype).requires_grad_()
    lora_b = (torch.randn(45, 8) / 4).to(adapter_dtype).requires_grad_()
    got = fused_lora_linear(x, weight, lora_a, lora_b, 2.0, bias, implementation="torch")
    want = lora_linear_reference(x, weight, lora_a, lora_b, 2.0, bias)
    assert got.dtype == want.dtype == dtype
    grad_out = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, (x, lora_a, lora_b), grad_out)
    want_grads = torch.autograd.grad(want, (x, lora_a, lora_b), grad_out)
    assert rel(got, want) < tol
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == w.dtype and rel(g, w) < tol


def test_a_wrong_scaling_is_caught():
    # Negative control for the tolerance above: a doubled low-rank term is far outside it.
    torch.manual_seed(0)
    x, weight = torch.randn(5, 16), torch.randn(12, 16) / 4
    lora_a, lora_b = torch.randn(4, 16) / 4, torch.randn(12, 4)
    got = fused_lora_linear(x, weight, lora_a, lora_b, 4.0, implementation="torch")
    assert rel(got, lora_linear_reference(x, weight, lora_a, lora_b, 2.0)) > 0.1


def tiny_lora_llama(dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=301, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    return get_peft_model(LlamaForCausalLM(config).to(dtype),
                          LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_a_model_with_the_torch_fused_lora_follows_peft_loss_curve(dtype, rtol):
    """20 AdamW steps on one batch, peft's forward against the patched model. fp32 drift is
    ~1e-6 (1e-4 allowed, as in test_kernels_convergence); bf16 curves sit within ~1e-2 of each
    other (bf16 loss noise), and both must learn."""
    reference = tiny_lora_llama(dtype)
    fused = copy.deepcopy(reference)
    lines = apply_kernels(fused, KernelsConfig(lora=True, choose={"lora": "torch"}), device="cpu")
    assert lines == ["lora (torch): fused 2 down_proj, 2 gate_proj, 2 k_proj, 2 o_proj, "
                     "2 q_proj, 2 up_proj, 2 v_proj"]
    ids = torch.randint(0, 301, (1, 12), generator=torch.Generator().manual_seed(1))

    def curve(model):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for _ in range(20):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    want, got = curve(reference), curve(fused)
    print("peft ", want, "\nfused", got)
    assert want[-1] < want[0] - 1 and got[-1] < got[0] - 1
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=rtol, atol=0)
