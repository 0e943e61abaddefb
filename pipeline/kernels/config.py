"""The kernels' own settings; training recipes hold one under `kernels:`."""

from __future__ import annotations

from typing import Literal

from countrytune.schema import Schema


class KernelsConfig(Schema):
    """Fused kernels on the training hot path (pipeline/kernels/); each sits beside a plain
    PyTorch reference that is the CPU fallback and the test oracle."""

    rms_norm: bool = False
    """RMSNorm through Liger's kernel (Llama/Qwen casting, and Gemma's (1 + w) offset)."""
    rope: bool = False
    """Rotary position embedding of q and k through Liger's kernel, in place."""
    swiglu: bool = False
    """act(gate(x)) * up(x) of SwiGLU MLPs through Liger's kernel, after the (LoRA) projections."""
    fused_linear_cross_entropy: bool = False
    """Output head and cross-entropy fused in chunks: the full logits are never materialised."""
    lora: bool = False
    """Our fused LoRA projections: x W^T + s (x A^T) B^T in one pass over the output;
    unsupported LoRA settings fall back to peft's forward, logging why."""
    implementation: Literal["auto", "triton", "reference"] = "auto"
    """auto: Triton when CUDA is available (or TRITON_INTERPRET=1), else the PyTorch reference;
    triton: fail with the reason when Triton cannot run; reference: plain PyTorch always."""

    def any_enabled(self) -> bool:
        return self.rms_norm or self.rope or self.swiglu or self.fused_linear_cross_entropy or self.lora
