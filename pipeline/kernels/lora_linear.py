"""Fused LoRA projection y = x W^T + b + s (x A^T) B^T: a Triton kernel beside its reference.

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
    from pipeline.kernels import _lora_triton
    from pipeline.kernels.backend import interpreting

    c = torch.empty((a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)
    if c.numel():
        _lora_triton.launch(a, b, u, v, float(scale), bias, c, interpreted=interpreting())
    return c


class FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T with a Triton forward and backward (see the module doc).

    W, b, A and B are kept as references on ctx, not saved tensors, and read at backward
    time: they are parameters, and under ZeRO-3 DeepSpeed swaps their storage between forward
    and backward (released after the layer's forward, gathered again before its backward).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, lora_a: Tensor,
                lora_b: Tensor, scaling: float) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        xa = x2.to(lora_a.dtype) @ lora_a.t()  # [M, r]: the only extra activation kept
        y = matmul_plus_low_rank(x2, weight.t(), xa, lora_b.t(), scaling, bias, x.dtype)
        ctx.save_for_backward(x2, xa)
        ctx.weight, ctx.lora_a, ctx.lora_b, ctx.scaling = weight, lora_a, lora_b, scaling
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, xa = ctx.saved_tensors
        weight, lora_a, lora_b, s = ctx.weight, ctx.lora_a, ctx.lora_b, ctx.scaling
        dy2 = dy.reshape(-1, dy.shape[-1])
        dy_lr = dy2.to(lora_b.dtype)  # the gradient peft's low-rank branch sees (fp32 adapters)
        dyb = dy_lr @ lora_b  # [M, r]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = matmul_plus_low_rank(dy2, weight, dyb, lora_a, s, None, x2.dtype)
            dx = dx.view(*dy.shape[:-1], x2.shape[1])
        if ctx.needs_input_grad[3]:
            da = (dyb.t() @ x2.to(lora_a.dtype)).mul_(s)
        if ctx.needs_input_grad[4]:
            db = (dy_lr.t() @ xa).mul_(s)
        return dx, None, None, da, db, None


def fused_lora_linear(x: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float,
                      bias: Tensor | None = None) -> Tensor:
    """The fused projection; same arguments and result as `lora_linear_reference`."""
    return FusedLoraLinear.apply(x, weight, bias, lora_a, lora_b, float(scaling))
