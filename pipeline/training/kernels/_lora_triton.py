"""The Triton kernel of the fused LoRA projection (imported only when it runs: needs triton).

Triton decides at import time whether its kernels are compiled for the GPU or run by the
interpreter (TRITON_INTERPRET=1), so this module is imported lazily from lora_linear.py.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def matmul_plus_low_rank_kernel(
    a_ptr, b_ptr, u_ptr, v_ptr, bias_ptr, c_ptr,
    M, N, K, R, scale,
    stride_am, stride_ak, stride_bk, stride_bn,
    stride_um, stride_ur, stride_vr, stride_vn,
    stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, R_PAD: tl.constexpr,
    MAIN_PRECISION: tl.constexpr, LOW_RANK_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C[M, N] = A[M, K] @ B[K, N] + scale * U[M, R] @ V[R, N] (+ bias[N]), fp32 accumulation.

    Any strides: the forward passes W [out, in] as B through swapped strides (B = W^T), the
    backward passes it as is (B = W). Programs are grouped along M (GROUP_M) so consecutive
    programs reuse the same columns of B from L2, as in Triton's matmul tutorial.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows/columns past the edge wrap around instead of being masked: loads stay unmasked
    # along M and N, and the masked store below drops the wrapped results.
    rows = offs_m % M
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=MAIN_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # The low-rank branch: R (padded to R_PAD >= 16, tl.dot's minimum) more steps of the
    # same accumulation while the tile is still in registers.
    offs_r = tl.arange(0, R_PAD)
    u = tl.load(u_ptr + rows[:, None] * stride_um + offs_r[None, :] * stride_ur,
                mask=offs_r[None, :] < R, other=0.0)
    v = tl.load(v_ptr + offs_r[:, None] * stride_vr + cols[None, :] * stride_vn,
                mask=offs_r[:, None] < R, other=0.0)
    acc += scale * tl.dot(u, v, input_precision=LOW_RANK_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]

    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


# H100, bf16: Triton's matmul tutorial finds 128x256x64 / 3 stages / 8 warps best at 4096^3;
# the smaller tiles give the thin k/v projections (N = 1024) enough programs to fill 132 SMs.
# Autotuned once per (M, N, K); not yet measured on our shapes. All share BLOCK_K = 64, which
# the launcher's EVEN_K test relies on.
TUNED_BLOCK_K = 64
matmul_plus_low_rank_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": TUNED_BLOCK_K, "GROUP_M": 8},
                      num_stages=3, num_warps=8),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": TUNED_BLOCK_K, "GROUP_M": 8},
                      num_stages=4, num_warps=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": TUNED_BLOCK_K, "GROUP_M": 8},
                      num_stages=4, num_warps=4),
    ],
    key=["M", "N", "K"],
)(matmul_plus_low_rank_kernel)

# Under the interpreter each program runs in numpy (~1 ms each): few, small tiles.
INTERPRETER_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4}


def launch(a, b, u, v, scale, bias, c, *, interpreted: bool) -> None:
    """Fill c [M, N] with a @ b + scale * u @ v (+ bias); tensors may be strided views."""
    (M, K), N, R = a.shape, b.shape[1], u.shape[1]
    args = (a, b, u, v, bias if bias is not None else c, c, M, N, K, R, scale,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            u.stride(0), u.stride(1), v.stride(0), v.stride(1), c.stride(0), c.stride(1))
    meta = {"HAS_BIAS": bias is not None, "R_PAD": max(16, triton.next_power_of_2(R)),
            "MAIN_PRECISION": _precision(a.dtype, c.dtype),
            "LOW_RANK_PRECISION": _precision(u.dtype, c.dtype)}

    def grid(m):
        return (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]),)

    if interpreted:
        blocks = INTERPRETER_BLOCKS
        matmul_plus_low_rank_kernel[grid(blocks)](
            *args, EVEN_K=K % blocks["BLOCK_K"] == 0, **meta, **blocks)
    else:
        matmul_plus_low_rank_tuned[grid](*args, EVEN_K=K % TUNED_BLOCK_K == 0, **meta)


def _precision(dtype, out_dtype) -> str | None:
    """tl.dot input precision for operands of `dtype` producing an `out_dtype` result.

    fp32 operands in an fp32 result follow torch's own matmul setting (ieee unless TF32 is
    allowed), so the fused path rounds like F.linear. fp32 adapter operands in a bf16/fp16
    result may use TF32: its 10-bit mantissa is at least as fine as the rounding the result
    gets anyway (7 bits bf16, 10 bits fp16). Half-precision operands take the default.
    """
    import torch

    if dtype != torch.float32:
        return None
    if out_dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"
