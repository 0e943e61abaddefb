"""Fused LoRA projection y = x W^T + b + s (x A^T) B^T: two implementations beside the reference.

W [out, in] is the frozen base weight, A [r, in] and B [out, r] the adapter, s its scaling.
peft computes the projection as five passes over the output-sized tensors (base GEMM, the
[M, out] product of the low-rank branch, its scaling, the add, the cast back). Here the small
xa = x A^T [M, r] is computed first and then ONE matmul kernel accumulates x W^T and
s * xa B^T into the same output tile: the low-rank branch becomes r more steps of the K loop,
and the output is written once. Backward folds likewise:

    dx = dy W + s (dy B) A      one kernel: (dy B) is [M, r], A is the low-rank "extra K"
    dA = s (dy B)^T x           [r, in], a GEMM reducing over tokens (cuBLAS)
    dB = s dy^T xa              [out, r], likewise

Only x and xa are saved for backward (not the output); W gets no gradient.

Dtypes follow peft: x, W (and b) share a dtype (fp16, bf16 or fp32); A and B may be that
dtype or fp32 (peft's default `autocast_adapter_dtype` keeps adapters of a bf16 model in
fp32), in which case xa, dy B and the adapter gradients are formed in fp32 as peft does.

`implementation="torch"` is the same fusion in PyTorch ops, for devices where cuBLAS's GEMM beats
ours (issue 23: our Triton GEMM made the H200 run 17% slower than peft's path): the base
GEMM, then `addmm_` adds s xa B^T into its output in place. What it saves against peft's
forward is peft's dtype round trip: with fp32 adapters on a bf16 model, peft copies x to fp32
for every projection (kept for backward: at Llama-3.1-8B's shape and 4,096 tokens, ~640 MB
per layer) and writes the [tokens, out] low-rank product, its scaling, the sum and the cast
back as four fp32/bf16 passes (~1.6 GB of traffic for one MLP up-projection). Here the
low-rank branch runs in the base dtype, as autocast would run it, its gradients are cast to
the adapters' dtype, and the output is touched once more. Stacking the A of projections that
share an input (q/k/v, gate/up) into one GEMM would save re-reading x, ~1 ms of a ~600 ms
8B step by that arithmetic: not worth a cross-layer cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lora_linear_reference(x: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor,
                          scaling: float, bias: Tensor | None = None) -> Tensor:
    """peft's lora.Linear forward without dropout: the CPU fallback and the test oracle."""
    result = F.linear(x, weight, bias)
    low_rank = F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b) * scaling
    return (result + low_rank).to(result.dtype)


def matmul_plus_low_rank(a: Tensor, b: Tensor, u: Tensor, v: Tensor, scale: float,
                         bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """a [M, K] @ b [K, N] + scale * u [M, R] @ v [R, N] (+ bias) in one Triton kernel.

    b and v may be transposed views: only their strides reach the kernel.
    """
    from pipeline.training.kernels import _lora_triton
    from pipeline.training.kernels.backend import interpreting

    c = torch.empty((a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)
    if c.numel():
        _lora_triton.launch(a, b, u, v, float(scale), bias, c, interpreted=interpreting())
    return c


def addmm_plus_low_rank(a: Tensor, b: Tensor, u: Tensor, v: Tensor, scale: float,
                        bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """The same result in PyTorch ops: cuBLAS's GEMM (with the bias), then scale * u @ v added
    into its output in place. u and v must be in a's dtype."""
    c = torch.addmm(bias, a, b) if bias is not None else a @ b
    return c.addmm_(u, v, alpha=scale).to(out_dtype)


# implementation -> (a @ b + scale * u @ v in one call, whether the low-rank branch runs in the
# adapters' dtype (peft's choice, which the Triton kernel keeps) or in the base dtype (autocast's,
# which the cuBLAS path takes to skip peft's fp32 round trip)).
GEMM_PLUS_LOW_RANK = {"triton": (matmul_plus_low_rank, True), "torch": (addmm_plus_low_rank, False)}


class FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T, forward and backward each as two calls of one
    GEMM-plus-low-rank primitive (see the module doc): our Triton kernel, or cuBLAS.

    W, b, A and B are kept as references on ctx, not saved tensors, and read at backward
    time: they are parameters, and under ZeRO-3 DeepSpeed swaps their storage between forward
    and backward (released after the layer's forward, gathered again before its backward).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, lora_a: Tensor,
                lora_b: Tensor, scaling: float, implementation: str = "triton") -> Tensor:
        gemm, adapter_precision = GEMM_PLUS_LOW_RANK[implementation]
        low = lora_a.dtype if adapter_precision else x.dtype  # the low-rank branch's dtype
        x2 = x.reshape(-1, x.shape[-1])
        xa = x2.to(low) @ lora_a.to(low).t()  # [M, r]: the only extra activation kept
        y = gemm(x2, weight.t(), xa, lora_b.to(low).t(), scaling, bias, x.dtype)
        ctx.save_for_backward(x2, xa)
        ctx.weight, ctx.lora_a, ctx.lora_b, ctx.scaling = weight, lora_a, lora_b, scaling
        ctx.gemm, ctx.low = gemm, low
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, xa = ctx.saved_tensors
        weight, lora_a, lora_b, s, low = ctx.weight, ctx.lora_a, ctx.lora_b, ctx.scaling, ctx.low
        dy2 = dy.reshape(-1, dy.shape[-1])
        dy_lr = dy2.to(low)  # the gradient the low-rank branch sees (fp32 with peft's fp32 adapters)
        dyb = dy_lr @ lora_b.to(low)  # [M, r]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = ctx.gemm(dy2, weight, dyb, lora_a.to(low), s, None, x2.dtype)
            dx = dx.view(*dy.shape[:-1], x2.shape[1])
        if ctx.needs_input_grad[3]:
            da = (dyb.t() @ x2.to(low)).mul_(s).to(lora_a.dtype)
        if ctx.needs_input_grad[4]:
            db = (dy_lr.t() @ xa).mul_(s).to(lora_b.dtype)
        return dx, None, None, da, db, None, None


def fused_lora_linear(x: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float,
                      bias: Tensor | None = None, implementation: str = "triton") -> Tensor:
    """The fused projection; same arguments and result as `lora_linear_reference`."""
    return FusedLoraLinear.apply(x, weight, bias, lora_a, lora_b, float(scaling), implementation)
