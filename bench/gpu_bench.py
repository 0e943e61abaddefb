"""Fused kernels on one GPU: correctness against the PyTorch references, then LoRA step timings.

    bash bench/gpu.sh            # on the GPU machine (see gpu.sh for the wheels it installs)
    bash bench/gpu.sh --smoke    # on a CPU, Triton interpreter, tiny model: end to end in ~1 min

(a) Every kernel against its reference in fp32 and bf16 (fp32 only in --smoke): forward and
    all gradients, as a norm-relative error ||got - want|| / ||want||.
(b) Training steps of a Llama-3.1-8B-shaped model (random bf16 weights built on the GPU, no
    download): seq 4096, micro-batch 1, LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, gradient
    checkpointing, AdamW on the LoRA parameters, for three configurations:
      hf+peft  HF + peft + SDPA, loss from HF's forward with labels
      liger    the same after liger_kernel's apply_liger_kernel_to_llama (fused linear CE)
      ours     the same with pipeline.kernels.apply_kernels (all on) + linear_cross_entropy_sum
    Liger's patch is process-wide (it rebinds names in transformers' llama module), so it runs
    last; ours patches instances only.

MFU = tokens/s * (6 N + 12 L d T) / 989e12: N parameters without the input embedding, L
layers, d hidden size, T sequence length (the PaLM convention: attention counted as
non-causal, weight gradients counted though LoRA skips those of the frozen base, gradient
checkpointing's recomputation not counted); 989 TFLOP/s is the H100 SXM dense bf16 peak.
Writes $OUT/kernels-bench.json (./bench-out when OUT is unset).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "--smoke" in sys.argv
if SMOKE:
    # The interpreter must be chosen before triton is first imported; the shims Liger needs
    # under it live with the tests (tests/kernel_interpreter.py explains them).
    sys.path.insert(0, str(ROOT / "tests"))
    import kernel_interpreter

    kernel_interpreter.enable()
    os.environ["TRITON_INTERPRET"] = "1"

import torch

H100_BF16_PEAK = 989e12
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Norm-relative error allowed per dtype. fp32: both sides compute the same fp32 expressions
# (no TF32), differing in summation order only: ~1e-7 observed, 1e-5 allowed. bf16: unit
# roundoff 2^-9 = 2e-3; kernel and reference round at different points (Liger's llama norm
# casts before the weight multiply, the fused LoRA adds the low-rank branch before rounding
# where peft rounds the base output first), a few roundoffs apart: 1e-2 flags real mistakes.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def llama_config(smoke: bool):
    from transformers import LlamaConfig

    if smoke:
        shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 301}
    else:  # Llama-3.1-8B
        shape = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
    return LlamaConfig(**shape, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, use_cache=False, attn_implementation="sdpa")


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

    from pipeline.kernels import linear_cross_entropy_sum, patch
    from pipeline.kernels.lora_linear import fused_lora_linear, lora_linear_reference

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
        for name, adapter_dtype, bias in (("lora fp32 adapters", torch.float32, None),
                                          ("lora + bias", dtype, b)):
            a_ = rand(16, hidden, scale=hidden ** -0.5, dt=adapter_dtype)
            b_ = rand(out, 16, scale=0.25, dt=adapter_dtype)
            results += compare(
                name, dtype,
                lambda x, a, bb, w=w, bias=bias: fused_lora_linear(x, w, a, bb, 2.0, bias),
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


def build(config_name: str, smoke: bool, device, dtype):
    """A fresh LoRA model of the benchmark shape (same seed: same weights in every config)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(llama_config(smoke))
    finally:
        torch.set_default_dtype(previous)
    notes = []
    if config_name == "liger":
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True,
                                    fused_linear_cross_entropy=True, model=model)
        notes.append("apply_liger_kernel_to_llama(rope, rms_norm, swiglu, fused linear CE)")
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=LORA_TARGETS, bias="none",
                                             task_type="CAUSAL_LM"))
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if config_name == "ours":
        from pipeline.kernels import KernelsConfig, apply_kernels

        notes += apply_kernels(model, KernelsConfig(
            rms_norm=True, rope=True, swiglu=True, fused_linear_cross_entropy=True, lora=True,
            implementation="triton"))
    model.train()
    return model, notes


def loss_fn(config_name: str):
    from pipeline.kernels import linear_cross_entropy_sum

    def hf_loss(model, ids):
        return model(input_ids=ids, labels=ids).loss

    def our_loss(model, ids):
        base = model.get_base_model()
        hidden = base.model(input_ids=ids, use_cache=False).last_hidden_state
        # labels aligned with hidden: position i predicts token i+1; the last predicts nothing
        labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
        total = linear_cross_entropy_sum(hidden, base.lm_head.weight, labels,
                                         implementation="triton")
        return total / (labels != -100).sum()

    return our_loss if config_name == "ours" else hf_loss


def bench_config(name, args, device, dtype) -> dict:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, notes = build(name, args.smoke, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    config = model.get_base_model().config
    ids = torch.randint(0, config.vocab_size, (1, args.seq), device=device,
                        generator=torch.Generator(device=device).manual_seed(2))
    compute_loss = loss_fn(name)
    if cuda:
        sync()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
    weights = torch.cuda.memory_allocated() if cuda else 0
    losses, times = [], []
    for _ in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        loss = compute_loss(model, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    step_s = sum(times[args.warmup:]) / args.steps
    tokens = args.seq
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    flops_per_token = 6 * n_params + 12 * config.num_hidden_layers * config.hidden_size * args.seq
    result = {
        "config": name, "step_s": step_s, "tokens_per_s": tokens / step_s,
        "mfu": tokens / step_s * flops_per_token / H100_BF16_PEAK,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "weights_gib": weights / 2**30 if cuda else None,
        "losses": losses, "step_times_s": times, "notes": notes,
    }
    del model, optimizer, params, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def print_table(rows) -> None:
    base = next((r for r in rows if r["config"] == "hf+peft" and "error" not in r), None)
    print(f"\n{'config':<9} {'tokens/s':>9} {'step s':>8} {'peak GiB':>9} {'above wts':>9} "
          f"{'MFU':>6} {'x tok/s':>8} {'x peak':>7} {'x above':>8}  first/last loss")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<9} FAILED: {r['error']}")
            continue
        peak = r["peak_mem_gib"]
        above = peak - r["weights_gib"] if peak is not None else None

        def ratio(value, key, r=r, base=base):
            if base is None or value is None:
                return "-"
            ref = base[key] if key != "above" else base["peak_mem_gib"] - base["weights_gib"]
            return f"{value / ref:.2f}"

        fmt = (lambda v: f"{v:.1f}" if v is not None else "-")
        print(f"{r['config']:<9} {r['tokens_per_s']:>9.0f} {r['step_s']:>8.3f} {fmt(peak):>9} "
              f"{fmt(above):>9} {r['mfu']:>6.1%} {ratio(r['tokens_per_s'], 'tokens_per_s'):>8} "
              f"{ratio(peak, 'peak_mem_gib'):>7} {ratio(above, 'above'):>8}  "
              f"{r['losses'][0]:.4f}/{r['losses'][-1]:.4f}")
    print("goal (issue 6): ours >= 1.6x tokens/s of hf+peft and >= 1.15x of liger; "
          "peak <= 0.45x hf+peft")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, interpreter, tiny model")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (3; smoke 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (5; smoke 1)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per step (4096; smoke 32)")
    parser.add_argument("--configs", default="hf+peft,ours,liger",
                        help="comma list, run in this order (liger must be last)")
    parser.add_argument("--skip-checks", action="store_true")
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.steps = args.steps if args.steps is not None else (1 if args.smoke else 5)
    args.seq = args.seq or (32 if args.smoke else 4096)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    out_dir = Path(os.environ.get("OUT") or "bench-out")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"device": "cpu (smoke, Triton interpreter)" if args.smoke
              else torch.cuda.get_device_name(), "torch": torch.__version__,
              "args": vars(args), "mfu_formula": "tokens/s * (6 N + 12 L d T) / 989e12",
              "checks": [], "configs": []}
    started = time.perf_counter()

    if not args.skip_checks:
        dtypes = [torch.float32] if args.smoke else [torch.float32, torch.bfloat16]
        try:
            report["checks"] = run_checks(device, dtypes, args.smoke)
        except Exception as e:  # noqa: BLE001 (keep going: the timings are still worth having)
            traceback.print_exc()
            report["checks"] = [{"check": "all", "error": repr(e), "ok": False}]
        print(f"{'check':<22} {'dtype':<9} {'tensor':<6} {'rel err':>9} {'tol':>7}")
        for c in report["checks"]:
            if "error" in c:
                print(f"{c['check']:<22} ERROR {c['error']}")
            else:
                print(f"{c['check']:<22} {c['dtype']:<9} {c['tensor']:<6} {c['rel_err']:>9.2e} "
                      f"{c['tol']:>7.0e} {'ok' if c['ok'] else 'FAIL'}")
        print(f"checks: {sum(c['ok'] for c in report['checks'])}/{len(report['checks'])} ok "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    dtype = torch.float32 if args.smoke else torch.bfloat16
    for name in args.configs.split(","):
        t0 = time.perf_counter()
        try:
            result = bench_config(name, args, device, dtype)
        except Exception as e:  # noqa: BLE001 (an OOM in one config must not lose the others)
            traceback.print_exc()
            result = {"config": name, "error": repr(e)[:300]}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result["wall_s"] = time.perf_counter() - t0
        report["configs"].append(result)
        print(f"{name}: {result.get('step_s', float('nan')):.3f} s/step, "
              f"{result['wall_s']:.0f} s with build and warm-up", flush=True)
        (out_dir / "kernels-bench.json").write_text(json.dumps(report, indent=1))

    order = {"hf+peft": 0, "liger": 1, "ours": 2}
    print_table(sorted(report["configs"], key=lambda r: order.get(r["config"], 3)))
    print(f"total {time.perf_counter() - started:.0f} s; wrote {out_dir / 'kernels-bench.json'}")
    checks_ok = all(c["ok"] for c in report["checks"])
    return 0 if checks_ok and all("error" not in r for r in report["configs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
