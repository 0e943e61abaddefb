"""The kernels' own settings; training recipes hold one under `kernels:`."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from countrytune.schema import Schema

KernelName = Literal["rms_norm", "rope", "swiglu", "fused_linear_cross_entropy", "lora"]
Implementation = Literal["triton", "torch", "reference"]
# Which implementations each kernel has besides its PyTorch reference. The fused LoRA has two:
# our Triton GEMM (the low-rank branch inside its K loop) and "torch", the same fusion in
# PyTorch ops on cuBLAS (lora_linear.py); the others are Liger's Triton kernels.
IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {
    "rms_norm": ("triton", "reference"),
    "rope": ("triton", "reference"),
    "swiglu": ("triton", "reference"),
    "fused_linear_cross_entropy": ("triton", "reference"),
    "lora": ("triton", "torch", "reference"),
}


class KernelsConfig(Schema):
    """Fused kernels on the training hot path (pipeline/training/kernels/); each sits beside a plain
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
    """Fused LoRA projections: x W^T + s (x A^T) B^T with the output written once and only x and
    x A^T kept for backward; unsupported LoRA settings fall back to peft's forward, logging why."""
    implementation: Literal["auto", "triton", "reference"] = "auto"
    """auto: for each enabled kernel, what pipeline/training/kernels/decisions.yaml says measured fastest
    through `countrytune train` on this device class; a kernel never measured there, or measured
    slower than its reference, runs the reference. triton: every enabled kernel in Triton, failing
    with the reason when Triton cannot run. reference: plain PyTorch always."""
    choose: dict[KernelName, Implementation] = {}
    """Per-kernel implementation over `implementation` (e.g. {lora: torch} for the fused LoRA on
    cuBLAS): what benchmarks use to measure each choice."""

    @model_validator(mode="after")
    def _known_implementations(self) -> KernelsConfig:
        for kernel, choice in self.choose.items():
            if choice not in IMPLEMENTATIONS[kernel]:
                raise ValueError(f"kernels.choose.{kernel}: {choice!r} is not one of its "
                                 f"implementations ({', '.join(IMPLEMENTATIONS[kernel])})")
            if not getattr(self, kernel):
                raise ValueError(f"kernels.choose.{kernel} is set but kernels.{kernel} is off")
        return self

    def enabled(self) -> list[str]:
        return [k for k in IMPLEMENTATIONS if getattr(self, k)]

    def any_enabled(self) -> bool:
        return bool(self.enabled())
