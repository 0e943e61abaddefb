"""Fused kernels for LoRA training, each beside the plain PyTorch path it replaces.

    apply_kernels(peft_model, config)   patch one model instance (after get_peft_model and
                                        before DeepSpeed/accelerate wrap it); returns what
                                        was patched and why anything was not
    linear_cross_entropy_sum(...)       output head + summed cross-entropy (fused or not)
    gathered_for_read(*params)          ZeRO-3 gather around a direct read of a weight

Layers: Triton kernels and their autograd Functions (Liger's liger_kernel.ops for RMSNorm,
RoPE, SwiGLU and fused linear cross-entropy; ours in lora_linear.py for LoRA projections),
then patch.py, the one place that puts them into a model. triton and liger-kernel are
imported only when a kernel is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.kernels.backend import (  # noqa: F401  (interpreting: re-exported)
    interpreting,
    liger_problem,
    resolve_implementation,
    triton_problem,
)
from pipeline.kernels.config import KernelsConfig


def __getattr__(name: str):
    # torch-importing parts load on first use: the recipe schema imports this package for
    # KernelsConfig, and `countrytune launch` must validate recipes without torch installed.
    if name in ("gathered_for_read", "linear_cross_entropy_sum"):
        from pipeline.kernels import cross_entropy

        return getattr(cross_entropy, name)
    raise AttributeError(f"module 'pipeline.kernels' has no attribute {name!r}")


__all__ = ["KernelPlan", "KernelsConfig", "apply_kernels", "gathered_for_read",
           "linear_cross_entropy_sum", "plan_kernels", "resolve_implementation"]

LIGER_KERNELS = ("rms_norm", "rope", "swiglu")
ALL_KERNELS = (*LIGER_KERNELS, "fused_linear_cross_entropy", "lora")


@dataclass(frozen=True)
class KernelPlan:
    """Which implementation each enabled kernel gets on the device the model trains on. One
    decision for every kernel, the fused cross-entropy included, so none of them can take
    Triton while another reports the reference for the same reason."""

    choices: dict[str, str]
    """kernel -> "triton" or "reference"."""
    reasons: dict[str, str]
    """kernel -> why it runs the reference (only those that do)."""

    @property
    def ce_implementation(self) -> str | None:
        """For the loss: "triton" when the fused linear cross-entropy runs, else None."""
        return "triton" if self.choices.get("fused_linear_cross_entropy") == "triton" else None

    def summary(self) -> dict[str, str]:
        """kernel -> "fused" or "reference: why", for run.json."""
        return {k: "fused" if v == "triton" else f"reference: {self.reasons[k]}"
                for k, v in self.choices.items()}


def plan_kernels(config: KernelsConfig, device_type: str) -> KernelPlan:
    """Decide by the device the model will train on (not where its weights are now: the
    trainer loads on the CPU and accelerate moves the model afterwards). Raises a UserError
    when implementation is "triton" and a kernel cannot run."""
    from countrytune.errors import UserError

    enabled = [k for k in ALL_KERNELS if getattr(config, k)]
    if config.implementation == "reference":
        return KernelPlan({k: "reference" for k in enabled}, {k: "implementation=reference" for k in enabled})
    triton_why = triton_problem(device_type)
    liger_why = liger_problem()
    choices, reasons = {}, {}
    for k in enabled:
        why = triton_why or (liger_why if k != "lora" else None)  # all but lora are Liger's
        if why and config.implementation == "triton":
            raise UserError(f"kernels.{k} with implementation 'triton': {why}; set "
                            f"kernels.implementation to auto or reference")
        choices[k] = "reference" if why else "triton"
        if why:
            reasons[k] = why
    return KernelPlan(choices, reasons)


def apply_kernels(model, config: KernelsConfig, device=None) -> list[str]:
    """Patch the enabled kernels into `model` (a peft model or a plain HF model) for training
    on `device` (default: where its parameters are now).

    Returns one readable line per kernel: what was fused, what kept PyTorch and why. Raises
    a UserError when implementation is "triton" and Triton (or Liger, for its kernels) cannot
    run. The fused cross-entropy is not a patch: the loop calls linear_cross_entropy_sum with
    `plan_kernels(config, device).ce_implementation`.
    """
    from pipeline.kernels import patch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if device is None:
        param = next(base.parameters(), None)
        device = param.device if param is not None else "cpu"
    plan = plan_kernels(config, getattr(device, "type", str(device)))
    if not plan.choices:
        return ["no kernels enabled: plain PyTorch"]
    lines: list[str] = []
    for kernel, choice in plan.choices.items():
        if choice == "reference":
            lines.append(f"{kernel}: PyTorch reference ({plan.reasons[kernel]})")
        elif kernel == "rms_norm":
            lines += patch.patch_rms_norm(base)
        elif kernel == "rope":
            lines += patch.patch_rope(base)
        elif kernel == "swiglu":
            lines += patch.patch_swiglu(base)
        elif kernel == "lora":
            lines += patch.apply_fused_lora(model)
        else:
            lines.append("fused_linear_cross_entropy: Liger's chunked kernel in "
                         "linear_cross_entropy_sum (logits never materialised in full)")
    return lines
