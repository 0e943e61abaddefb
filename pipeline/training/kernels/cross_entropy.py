"""Output head + cross-entropy, summed over target tokens: Liger's fused kernel or PyTorch.

The training loop divides the sum by the target tokens of the whole optimiser step, so this
returns a sum, in fp32. Labels arrive aligned (labels[i] is the target of hidden[i]).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.training.kernels.backend import liger_problem, resolve_implementation

# Liger bounds the transient logits of one chunk to CHUNK_MEM_CONST x (tokens x hidden)
# elements. 1 (its default) gives chunks of 128 rows at Llama-3 shapes (V=128256, H=4096,
# 4096 tokens): 32 thin GEMMs. 4 gives 512-row chunks, 128 MB of bf16 logits at a time, and
# GEMMs wide enough to fill an H100. Chosen by that arithmetic, not yet by a measurement.
CHUNK_MEM_CONST = 4


def _is_zero3(param: Tensor) -> bool:
    """DeepSpeed ZeRO-3 partitions a parameter in place and tags it with ds_id / ds_status."""
    return hasattr(param, "ds_id") and hasattr(param, "ds_status")


@contextlib.contextmanager
def gathered_for_read(*params: Tensor):
    """Make ZeRO-3 partitioned parameters whole for reading inside the block; a no-op otherwise.

    A fused op that reads a weight directly (not through its module's forward, whose ZeRO-3
    pre-hooks gather it) sees an empty partition unless the weight is gathered first. This is
    what breaks fused linear cross-entropy under ZeRO-3 in other projects. modifier_rank=None:
    read only, nothing is broadcast back when the block ends.
    """
    # Only parameters whose data is away: small ones stay whole on every process
    # (stage3_param_persistence_threshold) and are in use by their modules, and gathering
    # one of those would try to release it on exit, which DeepSpeed refuses.
    partitioned = [p for p in params if _is_zero3(p) and p.ds_status.name == "NOT_AVAILABLE"]
    if not partitioned:
        yield
        return
    import deepspeed  # only reached when parameters are already DeepSpeed's

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


class _ProjectWithFrozenHead(torch.autograd.Function):
    """hidden @ W^T for a frozen W that may be ZeRO-3 partitioned outside the forward.

    F.linear would save W and read it in backward, after `gathered_for_read` has released it,
    and find an empty partition. This keeps a reference to W (not a saved tensor, whose
    version counter a ZeRO-3 re-gather would trip) and gathers it again in backward; every
    rank reaches this backward in the same order, so the collective gather lines up.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor) -> Tensor:
        ctx.weight = weight
        return F.linear(hidden, weight)

    @staticmethod
    def backward(ctx, grad_logits: Tensor):
        weight = ctx.weight
        with gathered_for_read(weight):
            grad_hidden = grad_logits.to(weight.dtype) @ weight
        return grad_hidden, None


def output_transform(logits: Tensor, *, scale: float = 1.0, softcap: float | None = None) -> Tensor:
    """What some models do to the head's output before the loss, as their own forward does it:
    Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling` (scale = 1/that),
    Gemma-2 soft-caps with `final_logit_softcapping`: cap * tanh(logits / cap)."""
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def linear_cross_entropy_reference(hidden: Tensor, weight: Tensor, labels: Tensor, *,
                                   ignore_index: int = -100, scale: float = 1.0,
                                   softcap: float | None = None) -> Tensor:
    """F.linear in the operands' dtype (as HF's lm_head does), then cross-entropy in fp32."""
    h = hidden.reshape(-1, hidden.shape[-1])
    if _is_zero3(weight):
        if weight.requires_grad:
            raise NotImplementedError("linear_cross_entropy_sum under ZeRO-3 needs a frozen head")
        logits = _ProjectWithFrozenHead.apply(h, weight)
    else:
        logits = F.linear(h, weight)
    logits = output_transform(logits, scale=scale, softcap=softcap)
    return F.cross_entropy(logits.float(), labels.reshape(-1), ignore_index=ignore_index,
                           reduction="sum")


def linear_cross_entropy_sum(hidden: Tensor, weight: Tensor, labels: Tensor, *,
                             ignore_index: int = -100, implementation: str = "reference",
                             scale: float = 1.0, softcap: float | None = None) -> Tensor:
    """Sum over labels != ignore_index of -log softmax(t(hidden @ weight^T))[label], fp32, 0-dim,
    where t is the model's `output_transform` (scale, then soft-cap).

    hidden [..., H], weight [V, H] (the output head, frozen), labels [...] aligned with hidden.
    implementation: reference (PyTorch), triton (Liger's fused linear cross-entropy: logits are
    computed chunk by chunk and the gradient of hidden is formed in the forward, so the full
    [tokens, V] logits never exist), or auto. Under ZeRO-3 call it inside
    `gathered_for_read(weight)`: the fused kernel reads the weight only during this call.
    """
    impl = resolve_implementation(implementation)
    if impl == "reference":
        return linear_cross_entropy_reference(hidden, weight, labels, ignore_index=ignore_index,
                                              scale=scale, softcap=softcap)
    problem = liger_problem()
    if problem is not None:
        from countrytune.errors import UserError

        raise UserError(f"kernels.fused_linear_cross_entropy needs Liger's kernel: {problem}")
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    h = hidden.reshape(-1, hidden.shape[-1])
    if scale != 1.0:  # (s h) W^T = s (h W^T): the scale folds into the kernel's input
        h = h * scale
    if not h.is_contiguous():
        h = h.contiguous()
    loss = liger_fused_linear_cross_entropy(h, weight, labels.reshape(-1).contiguous(),
                                            ignore_index=ignore_index, reduction="sum",
                                            softcap=softcap, chunk_mem_const=CHUNK_MEM_CONST)
    return loss.float()
