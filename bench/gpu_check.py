"""Correctness on one GPU, before any timing: every kernel against its reference, the packed
attention against SDPA, and no Hub kernels with transformers' defaults.

    python3 bench/gpu_check.py            # on the GPU machine (bench/gpu.sh runs it first)
    .venv/bin/python bench/gpu_check.py --smoke   # here: CPU, Triton interpreter, fp32, tiny shapes

(a) Every kernel against its reference in fp32 and bf16 (fp32 only in --smoke): forward and
    all gradients, as a norm-relative error ||got - want|| / ||want||: the fused LoRA in
    Triton and in PyTorch ops ("torch"), Liger's RMSNorm (Llama and Gemma), SwiGLU, RoPE and
    fused linear cross-entropy.
(b) torch's varlen FlashAttention on packed documents (pipeline/training/attention.py) against SDPA with
    the block-diagonal causal mask, forward and gradients, bf16 (GPU only).
(c) A model saved to disk and loaded through the project's loader on CUDA with transformers'
    defaults and USE_HUB_KERNELS unset: `use_kernels` off, and `.train()` / `.eval()` (where
    transformers >= 5.24 kernelizes from the Hub) do not fail offline (GPU only).
Writes $OUT/gpu-check.json (./bench-out when OUT is unset); exits 1 if anything fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMOKE = "--smoke" in sys.argv
if SMOKE:
    # The interpreter must be chosen before triton is first imported; the shims Liger needs
    # under it live with the tests (tests/kernel_interpreter.py explains them).
    sys.path.insert(0, str(ROOT / "tests"))
    import kernel_interpreter

    kernel_interpreter.enable()
    os.environ["TRITON_INTERPRET"] = "1"

import torch

# Norm-relative error allowed per dtype. fp32: both sides compute the same fp32 expressions
# (no TF32), differing in summation order only: ~1e-7 observed, 1e-5 allowed. bf16: unit
# roundoff 2^-9 = 2e-3; kernel and reference round at different points (Liger's llama norm
# casts before the weight multiply, the fused LoRA adds the low-rank branch before rounding
# where peft rounds the base output first), a few roundoffs apart: 1e-2 flags real mistakes.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel_err(got, want) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()


def compare(name, dtype, got_fn, want_fn, inputs, modules=None) -> list[dict]:
    """Run both sides on the same inputs: error of the output, of each input's gradient and,
    for a pair of modules (patched, plain), of each parameter's gradient."""
    got_inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    want_inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    got, want = got_fn(*got_inputs), want_fn(*want_inputs)
    grad_out = torch.randn_like(want) if want.dim() else torch.tensor(0.5, device=want.device)
    got.backward(grad_out.to(got.dtype))
    want.backward(grad_out.to(want.dtype))
    errors = {"out": rel_err(got, want)}
    for i, (g, w) in enumerate(zip(got_inputs, want_inputs, strict=True)):
        if w.grad is not None:
            errors[f"d_in{i}"] = rel_err(g.grad, w.grad)
    if modules is not None:
        for (n, g), (_, w) in zip(modules[0].named_parameters(), modules[1].named_parameters(),
                                  strict=True):
            if w.grad is not None:
                errors[f"d_{n}"] = rel_err(g.grad, w.grad)
    tol = TOLERANCE[dtype]
    return [{"check": name, "dtype": str(dtype).removeprefix("torch."), "tensor": k,
             "rel_err": v, "tol": tol, "ok": v <= tol} for k, v in errors.items()]


def run_checks(device, dtypes, smoke: bool) -> list[dict]:
    from transformers import LlamaConfig
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaMLP,
        LlamaRMSNorm,
        LlamaRotaryEmbedding,
    )

    from pipeline.training.kernels import linear_cross_entropy_sum, patch
    from pipeline.training.kernels.lora_linear import fused_lora_linear, lora_linear_reference

    rows, hidden, out, inter, vocab = ((3, 37), 67, 45, 45, 301) if smoke else \
        ((2, 333), 512, 1000, 1376, 5000)
    results = []
    for dtype in dtypes:
        torch.manual_seed(0)

        def rand(*shape, scale=1.0, dt=dtype, grad=True):
            return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dt) \
                .requires_grad_(grad)

        x = rand(*rows, hidden)
        w, b = rand(out, hidden, scale=hidden ** -0.5, grad=False), rand(out, grad=False)
        for impl in ("triton", "torch"):
            for name, adapter_dtype, bias in ((f"lora {impl} fp32 adapt", torch.float32, None),
                                              (f"lora {impl} + bias", dtype, b)):
                a_ = rand(16, hidden, scale=hidden ** -0.5, dt=adapter_dtype)
                b_ = rand(out, 16, scale=0.25, dt=adapter_dtype)
                results += compare(
                    name, dtype,
                    lambda x, a, bb, w=w, bias=bias, impl=impl: fused_lora_linear(
                        x, w, a, bb, 2.0, bias, implementation=impl),
                    lambda x, a, bb, w=w, bias=bias: lora_linear_reference(x, w, a, bb, 2.0, bias),
                    [x, a_, b_])

        for name, cls in (("rms_norm llama", LlamaRMSNorm), ("rms_norm gemma", GemmaRMSNorm)):
            norm = cls(hidden).to(device=device, dtype=dtype)
            with torch.no_grad():
                norm.weight.normal_()
            fused = copy.deepcopy(norm)
            patch.patch_rms_norm(fused)
            results += compare(name, dtype, fused, norm, [x], (fused, norm))

        # LlamaMLP reads these four fields only; a LlamaConfig refuses odd hidden sizes.
        mlp = LlamaMLP(SimpleNamespace(hidden_size=hidden, intermediate_size=inter,
                                       mlp_bias=False, hidden_act="silu"))
        mlp = mlp.to(device=device, dtype=dtype)
        fused = copy.deepcopy(mlp)
        patch.patch_swiglu(fused)
        results += compare("swiglu mlp", dtype, fused, mlp, [x], (fused, mlp))

        attn_cfg = LlamaConfig(hidden_size=64 if smoke else 512, num_attention_heads=4 if smoke
                               else 8, num_key_value_heads=2, head_dim=16 if smoke else 64,
                               attn_implementation="sdpa")
        attn = LlamaAttention(attn_cfg, layer_idx=0).to(device=device, dtype=dtype)
        fused = copy.deepcopy(attn)
        patch.patch_rope(fused)
        xa = rand(*rows, attn_cfg.hidden_size)
        pos = torch.arange(rows[1], device=device).expand(*rows)
        cos, sin = LlamaRotaryEmbedding(attn_cfg).to(device)(xa, pos)
        cos, sin = cos.to(dtype), sin.to(dtype)

        def run_attn(module, rotation=(cos, sin)):
            return lambda t: module(t, position_embeddings=rotation, attention_mask=None)[0]

        results += compare("rope attention", dtype, run_attn(fused), run_attn(attn), [xa],
                           (fused, attn))

        head = rand(vocab, hidden, scale=hidden ** -0.5, grad=False)
        labels = torch.randint(0, vocab, rows, device=device)
        labels[0, :7] = -100
        results += compare(
            "linear cross-entropy", dtype,
            lambda h, w=head, y=labels: linear_cross_entropy_sum(h, w, y, implementation="triton"),
            lambda h, w=head, y=labels: linear_cross_entropy_sum(h, w, y,
                                                                 implementation="reference"),
            [x])
    return results


def check_packed_attention(device) -> list[dict]:
    """torch's varlen FlashAttention (what `countrytune_varlen` runs on CUDA) against SDPA with
    the block-diagonal causal mask, on rows of several documents, GQA, bf16."""
    from pipeline.training.attention import _block_causal_sdpa, _varlen, packed_kwargs, varlen_problem

    problem = varlen_problem(device.index)
    if problem is not None:
        return [{"check": "varlen attention", "error": problem, "ok": False}]
    torch.manual_seed(0)
    lengths = [700, 13, 1200, 1, 2182, 4096]  # two rows of 4096: short, long and one-token documents
    pos = torch.cat([torch.arange(n) for n in lengths]).view(2, 4096).to(device)
    boundaries = packed_kwargs(pos)
    q = torch.randn(2, 32, 4096, 128, device=device, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 8, 4096, 128, device=device, dtype=torch.bfloat16) for _ in range(2))
    return compare("varlen attention", torch.bfloat16,
                   lambda q, k, v: _varlen(q, k, v, boundaries, 128 ** -0.5),
                   lambda q, k, v: _block_causal_sdpa(q, k, v, boundaries, 128 ** -0.5),
                   [q.requires_grad_(), k.requires_grad_(), v.requires_grad_()])


def check_no_hub_kernels(device) -> list[dict]:
    """transformers' defaults, USE_HUB_KERNELS unset, `kernels` installed, no network: the
    project's loader turns Hub kernels off, and train()/eval() (where transformers kernelizes)
    run on CUDA."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.training.model import load_base_model
    from countrytune.artifacts.recipe import ModelSpec

    os.environ.pop("USE_HUB_KERNELS", None)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
        LlamaForCausalLM(config).save_pretrained(tmp)
        try:
            model = load_base_model(tmp, ModelSpec(name_or_path=tmp), dtype=torch.bfloat16, attn="sdpa")
            model.to(device).train()
            model.eval()
            loss = model(input_ids=torch.ones(1, 8, dtype=torch.long, device=device), labels=None).logits.sum()
            out.append({"check": "no hub kernels", "tensor": "train/eval", "ok": not model.use_kernels
                        and bool(torch.isfinite(loss)), "use_kernels": bool(model.use_kernels)})
        except Exception as e:  # noqa: BLE001
            out.append({"check": "no hub kernels", "error": f"{type(e).__name__}: {e}"[:300], "ok": False})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, interpreter, tiny shapes")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    out_dir = Path(os.environ.get("OUT") or "bench-out")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"device": "cpu (smoke, Triton interpreter)" if args.smoke else torch.cuda.get_device_name(),
              "torch": torch.__version__, "checks": []}
    started = time.perf_counter()
    dtypes = [torch.float32] if args.smoke else [torch.float32, torch.bfloat16]
    for part in (lambda: run_checks(device, dtypes, args.smoke),
                 *(() if args.smoke else (lambda: check_packed_attention(device),
                                          lambda: check_no_hub_kernels(device)))):
        try:
            report["checks"] += part()
        except Exception as e:  # noqa: BLE001 (one failing part must not hide the others)
            traceback.print_exc()
            report["checks"].append({"check": "part", "error": repr(e)[:300], "ok": False})
    print(f"{'check':<24} {'dtype':<9} {'tensor':<10} {'rel err':>9} {'tol':>7}")
    for c in report["checks"]:
        if "error" in c:
            print(f"{c['check']:<24} ERROR {c['error']}")
        elif "rel_err" in c:
            print(f"{c['check']:<24} {c['dtype']:<9} {c['tensor']:<10} {c['rel_err']:>9.2e} "
                  f"{c['tol']:>7.0e} {'ok' if c['ok'] else 'FAIL'}")
        else:
            print(f"{c['check']:<24} {'':<9} {c['tensor']:<10} {'ok' if c['ok'] else 'FAIL'} {c}")
    ok = sum(c["ok"] for c in report["checks"])
    print(f"checks: {ok}/{len(report['checks'])} ok ({time.perf_counter() - started:.0f} s)", flush=True)
    (out_dir / "gpu-check.json").write_text(json.dumps(report, indent=1))
    return 0 if ok == len(report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
