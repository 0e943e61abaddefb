"""Each fused kernel against its PyTorch reference: forward and every gradient, on the CPU.

The Triton kernels run under Triton's interpreter (tests/kernel_interpreter.py explains how it
is turned on for these tests only, and the two shims Liger needs). Shapes are small and odd
(3 x 37 rows of width 67, rank 8 and 20) so masking and tile edges are exercised while each
interpreted case stays around a second.

Tolerance, fp32 throughout: kernel and reference compute the same expressions and differ
only in summation order. A sum of n fp32 terms reordered moves by at most ~n * 2^-24 of the
sum of the terms' magnitudes; with n <= 111 here (tokens summed into a weight gradient) and
O(1) terms that is ~1e-5, hence rtol = atol = 2e-5. Observed differences are ~1e-6.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import kernel_interpreter
import pytest

# Before anything imports triton (so no pytest.importorskip("triton")): see the helper.
kernel_interpreter.enable_or_skip()

import torch

from pipeline.training.kernels import (
    KernelsConfig,
    apply_kernels,
    linear_cross_entropy_sum,
    patch,
)
from pipeline.training.kernels.lora_linear import fused_lora_linear, lora_linear_reference

ROOT = Path(__file__).resolve().parents[1]
TOL = {"rtol": 2e-5, "atol": 2e-5}  # fp32, see the module docstring


# The interpreter's code paths read TRITON_INTERPRET at call time too (kernel_interpreter.py).
interpreter_env = pytest.fixture(autouse=True)(kernel_interpreter.interpreter_env)


def grads(out, inputs, grad_out):
    """Gradients of <out, grad_out> for each input, cloned: Liger writes into some in place."""
    return [g.clone() for g in torch.autograd.grad(out, inputs, grad_out)]


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    settings = {"vocab_size": 301, "hidden_size": 64, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "max_position_embeddings": 128, "tie_word_embeddings": False}
    return LlamaConfig(**(settings | overrides))


# ---- LoRA projections ----------------------------------------------------------------------

@pytest.mark.parametrize("rank,with_bias", [(8, False), (20, True)])
def test_fused_lora_linear_matches_reference(rank, with_bias):
    torch.manual_seed(0)
    x = torch.randn(3, 37, 67, requires_grad=True)
    weight = torch.randn(45, 67) / 8
    bias = torch.randn(45) if with_bias else None
    lora_a = (torch.randn(rank, 67) / 8).requires_grad_()
    lora_b = (torch.randn(45, rank) / 4).requires_grad_()
    inputs = (x, lora_a, lora_b)

    got = fused_lora_linear(x, weight, lora_a, lora_b, 2.0, bias)
    want = lora_linear_reference(x, weight, lora_a, lora_b, 2.0, bias)
    grad_out = torch.randn_like(want)
    torch.testing.assert_close(got, want, **TOL)
    for g, w in zip(grads(got, inputs, grad_out), grads(want, inputs, grad_out), strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("adapter_dtype", [torch.float32, torch.float16])
def test_fused_lora_linear_half_precision(adapter_dtype):
    """fp16 activations and base weight, adapters fp32 (peft's default) or fp16.

    bf16 is checked on the GPU only (bench/gpu_bench.py): the interpreter's tl.dot reads bf16
    tiles (stored as uint16) as integers. Tolerance: fp16 unit roundoff is 2^-11 = 4.9e-4;
    peft rounds the base output and then the sum, the kernel rounds once, so the results sit
    a few roundoffs apart in norm: 2e-3 (observed ~4e-4).
    """
    torch.manual_seed(0)
    x = torch.randn(3, 37, 67).half().requires_grad_()
    weight = (torch.randn(45, 67) / 8).half()
    lora_a = (torch.randn(8, 67) / 8).to(adapter_dtype).requires_grad_()
    lora_b = (torch.randn(45, 8) / 4).to(adapter_dtype).requires_grad_()
    inputs = (x, lora_a, lora_b)
    got = fused_lora_linear(x, weight, lora_a, lora_b, 2.0)
    want = lora_linear_reference(x, weight, lora_a, lora_b, 2.0)
    assert got.dtype == want.dtype == torch.float16
    grad_out = torch.randn_like(want)
    pairs = [(got, want), *zip(grads(got, inputs, grad_out), grads(want, inputs, grad_out),
                               strict=True)]
    for g, w in pairs:
        assert g.dtype == w.dtype
        assert ((g.float() - w.float()).norm() / w.float().norm()).item() < 2e-3


# ---- RMSNorm, SwiGLU, RoPE through the patch module ----------------------------------------

@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_rms_norm_matches_reference(family):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = (LlamaRMSNorm if family == "llama" else GemmaRMSNorm)(67, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()  # Gemma's (1 + w) offset is only tested with w != 0
    fused = copy.deepcopy(norm)
    [line] = patch.patch_rms_norm(fused)
    assert "fused 1" in line
    x = torch.randn(3, 37, 67, requires_grad=True)
    want = norm(x)
    grad_out = torch.randn_like(want)
    got = fused(x)
    torch.testing.assert_close(got, want, **TOL)
    g_x, g_w = grads(got, (x, fused.weight), grad_out)
    r_x, r_w = grads(want, (x, norm.weight), grad_out)
    torch.testing.assert_close(g_x, r_x, **TOL)
    torch.testing.assert_close(g_w, r_w, **TOL)


def test_swiglu_matches_reference():
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    # LlamaMLP reads only these four fields; a LlamaConfig would refuse an odd hidden size.
    mlp = LlamaMLP(types.SimpleNamespace(hidden_size=67, intermediate_size=45, mlp_bias=False,
                                         hidden_act="silu"))
    fused = copy.deepcopy(mlp)
    assert "fused 1 LlamaMLP" in patch.patch_swiglu(fused)[0]
    x = torch.randn(3, 37, 67, requires_grad=True)
    want = mlp(x)
    grad_out = torch.randn_like(want)
    got = fused(x)
    torch.testing.assert_close(got, want, **TOL)
    got_grads = grads(got, (x, *fused.parameters()), grad_out)
    for g, w in zip(got_grads, grads(want, (x, *mlp.parameters()), grad_out), strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_rope_matches_reference_and_leaves_other_models_alone(monkeypatch):
    from liger_kernel.ops.rope import LigerRopeFunction
    from torch.utils.checkpoint import checkpoint
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaRotaryEmbedding,
    )

    torch.manual_seed(0)
    config = tiny_llama_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    attn = LlamaAttention(config, layer_idx=0)
    fused = copy.deepcopy(attn)
    assert "fused 1 LlamaAttention" in patch.patch_rope(fused)[0]
    calls = []
    real_apply = LigerRopeFunction.apply
    monkeypatch.setattr(LigerRopeFunction, "apply",
                        lambda *a: calls.append(1) or real_apply(*a))
    # 3 x 13 tokens: RoPE runs one interpreted program per token (~10 ms each).
    x = torch.randn(3, 13, 64, requires_grad=True)
    position_ids = torch.arange(13).expand(3, 13)
    cos, sin = LlamaRotaryEmbedding(config)(x, position_ids)
    want, _ = attn(x, position_embeddings=(cos, sin), attention_mask=None)
    assert not calls, "an unpatched attention must keep the PyTorch rotation"

    # Under gradient checkpointing the forward runs again in backward: the switch to the
    # fused rotation must hold there too (2 calls: forward and recomputation).
    def run(x):
        return fused(x, position_embeddings=(cos, sin), attention_mask=None)[0]

    got = checkpoint(run, x, use_reentrant=False)
    grad_out = torch.randn_like(want)
    torch.testing.assert_close(got, want, **TOL)
    got_grads = grads(got, (x, *fused.parameters()), grad_out)
    assert len(calls) == 2
    for g, w in zip(got_grads, grads(want, (x, *attn.parameters()), grad_out), strict=True):
        torch.testing.assert_close(g, w, **TOL)


# ---- output head + cross-entropy -----------------------------------------------------------

@pytest.mark.parametrize("transform", [{}, {"softcap": 2.0}, {"scale": 0.125}],
                         ids=["plain", "gemma2-softcap", "granite-scale"])
def test_linear_cross_entropy_sum_matches_reference(transform):
    torch.manual_seed(0)
    hidden = torch.randn(3, 37, 67, requires_grad=True)
    weight = torch.randn(301, 67) / 8
    labels = torch.randint(0, 301, (3, 37))
    labels[0, :5] = -100
    labels[2, -3:] = -100
    got = linear_cross_entropy_sum(hidden, weight, labels, implementation="triton", **transform)
    want = linear_cross_entropy_sum(hidden, weight, labels, implementation="reference", **transform)
    if transform:  # negative control: the transform changes the loss
        assert not torch.allclose(want, linear_cross_entropy_sum(hidden, weight, labels), rtol=1e-3)
    assert got.dtype == torch.float32 and got.dim() == 0
    # The loss is a sum over 103 tokens of O(5) values: 2e-5 relative covers the reordering.
    torch.testing.assert_close(got, want, rtol=2e-5, atol=0)
    grad_out = torch.tensor(0.5)  # not 1: exercises Liger's rescaling of its stored gradient
    torch.testing.assert_close(grads(got, (hidden,), grad_out)[0],
                               grads(want, (hidden,), grad_out)[0], **TOL)


# ---- switches and fallbacks ----------------------------------------------------------------

def test_triton_without_cuda_or_interpreter_is_a_clear_error():
    code = (
        "import torch\n"
        "from countrytune.errors import UserError\n"
        "from pipeline.training.kernels import KernelsConfig, resolve_implementation, "
        "linear_cross_entropy_sum\n"
        "assert resolve_implementation(KernelsConfig()) == 'reference'\n"
        "for call in (lambda: resolve_implementation(KernelsConfig(implementation='triton')),\n"
        "             lambda: linear_cross_entropy_sum(torch.zeros(2, 4), torch.zeros(3, 4),\n"
        "                                              torch.zeros(2, dtype=torch.long),\n"
        "                                              implementation='triton')):\n"
        "    try:\n"
        "        call()\n"
        "    except UserError as e:\n"
        "        print('ERROR:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    errors = [line for line in out.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, out.stdout
    for line in errors:
        assert "no CUDA device is available and TRITON_INTERPRET=1 is not set" in line
        assert "set kernels.implementation to auto or reference" in line


def test_reference_implementation_patches_nothing():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    config = KernelsConfig(rms_norm=True, rope=True, swiglu=True, lora=True,
                           implementation="reference")
    lines = apply_kernels(model, config)
    assert all("PyTorch reference (implementation=reference)" in line for line in lines)
    assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.parametrize("setting,reason", [({"lora_dropout": 0.1}, "lora_dropout p=0.1"),
                                            ({"use_dora": True}, "DoRA")])
def test_unsupported_lora_setting_falls_back_with_a_reason(setting, reason, caplog):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(tiny_llama_config()),
                           LoraConfig(r=8, target_modules="all-linear", **setting))
    for module in model.modules():  # B starts at zero; make the adapter count in the output
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    reference = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.kernels.patch"):
        lines = apply_kernels(model, KernelsConfig(lora=True, implementation="triton"))
    assert any(reason in line and "kept PyTorch for 2 down_proj" in line for line in lines)
    logged = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert len(logged) == 7, logged  # once per layer kind: q, k, v, o, gate, up, down
    model.eval(), reference.eval()  # dropout off: both sides deterministic
    ids = torch.randint(0, 301, (2, 11))
    torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits,
                               rtol=0, atol=0)


def test_fused_lora_layers_register_their_weights_with_zero3(monkeypatch):
    """Under ZeRO-3 the fused forward reads the children's weights: DeepSpeed must gather them
    with the lora.Linear module (checked for real with DeepSpeed ZeRO-3 on the CPU, see
    patch.py; here only that the registration happens, with a stand-in deepspeed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    registered = []
    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(
        register_external_parameter=lambda module, p: registered.append((module, p)))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    model = get_peft_model(LlamaForCausalLM(tiny_llama_config()),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    plain = copy.deepcopy(model)
    assert apply_kernels(plain, KernelsConfig(lora=True, implementation="triton")) == [
        "lora: fused 2 q_proj, 2 v_proj"]
    assert registered == []  # no ZeRO-3: nothing to register
    for p in model.parameters():
        p.ds_id, p.ds_status = id(p), "AVAILABLE"  # what zero.Init leaves on parameters
    lines = apply_kernels(model, KernelsConfig(lora=True, implementation="triton"))
    assert lines[0] == "lora: fused 2 q_proj, 2 v_proj" and "ZeRO-3" in lines[1]
    fused = [m for m in model.modules() if "forward" in vars(m)]
    assert len(registered) == 3 * len(fused) == 12  # base weight, lora_A, lora_B (no bias)
    assert {id(m) for m, _ in registered} == {id(m) for m in fused}
