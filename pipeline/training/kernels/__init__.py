"""Fused kernels for LoRA training, each beside the plain PyTorch path it replaces.

    apply_kernels(peft_model, config)   patch one model instance (after get_peft_model and
                                        before DeepSpeed/accelerate wrap it); returns what
                                        was patched and why anything was not
    linear_cross_entropy_sum(...)       output head + summed cross-entropy (fused or not)
    gathered_for_read(*params)          ZeRO-3 gather around a direct read of a weight

Layers: Triton kernels and their autograd Functions (Liger's liger_kernel.ops for RMSNorm,
RoPE, SwiGLU and fused linear cross-entropy; ours in lora_linear.py for LoRA projections, in
Triton or in PyTorch ops on cuBLAS), then patch.py, the one place that puts them into a model.
Which implementation `auto` runs on a device class is decisions.yaml's measured table. triton
and liger-kernel are imported only when a kernel is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.training.kernels.backend import (  # noqa: F401  (interpreting: re-exported)
    interpreting,
    liger_problem,
    resolve_implementation,
    triton_problem,
)
from countrytune.artifacts.recipe_kernels import KernelsConfig


def __getattr__(name: str):
    # torch-importing parts load on first use: the recipe schema imports this package for
    # KernelsConfig, and `countrytune launch` must validate recipes without torch installed.
    if name in ("gathered_for_read", "linear_cross_entropy_sum"):
        from pipeline.training.kernels import cross_entropy

        return getattr(cross_entropy, name)
    raise AttributeError(f"module 'pipeline.training.kernels' has no attribute {name!r}")


__all__ = ["KernelPlan", "KernelsConfig", "apply_kernels", "gathered_for_read",
           "linear_cross_entropy_sum", "plan_kernels", "resolve_implementation"]

LIGER_KERNELS = ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy")


@dataclass(frozen=True)
class KernelPlan:
    """Which implementation each enabled kernel gets on the device the model trains on. One
    decision for every kernel, the fused cross-entropy included, so none of them can take
    Triton while another reports the reference for the same reason."""

    choices: dict[str, str]
    """kernel -> "triton", "torch" (the fused LoRA in PyTorch ops) or "reference"."""
    reasons: dict[str, str]
    """kernel -> why it runs what it runs (auto's measurement, or why not fused)."""

    @property
    def ce_implementation(self) -> str | None:
        """For the loss: "triton" when the fused linear cross-entropy runs, else None."""
        return "triton" if self.choices.get("fused_linear_cross_entropy") == "triton" else None

    def summary(self) -> dict[str, str]:
        """kernel -> "fused", "fused (torch)" or "reference: why", for run.json."""
        shown = {"triton": "fused", "torch": "fused (torch)"}
        return {k: shown.get(v) or f"reference: {self.reasons[k]}" for k, v in self.choices.items()}


def plan_kernels(config: KernelsConfig, device_type: str, device_name: str | None = None) -> KernelPlan:
    """Decide by the device the model will train on (not where its weights are now: the
    trainer loads on the CPU and accelerate moves the model afterwards). `device_name` names
    the GPU for the decision table (default: asked of torch). Raises a UserError when a kernel
    asked for in Triton explicitly cannot run."""
    from countrytune.errors import UserError
    from pipeline.training.kernels.decisions import auto_choice, device_class

    choices, reasons = {}, {}
    for k in config.enabled():
        asked = config.choose.get(k, config.implementation)
        why = f"implementation={asked}" if asked == "reference" else None
        if asked == "auto":
            asked, why = auto_choice(k, device_class(device_type, device_name))
        if asked == "triton":
            problem = triton_problem(device_type) or (liger_problem() if k in LIGER_KERNELS else None)
            if problem and why is None:  # asked for by name, not chosen by auto
                raise UserError(f"kernels.{k} with implementation 'triton': {problem}; set "
                                f"kernels.implementation to auto or reference")
            if problem:
                asked, why = "reference", problem
        choices[k], reasons[k] = asked, why or f"implementation={asked}"
    return KernelPlan(choices, reasons)


def apply_kernels(model, config: KernelsConfig, device=None, device_name: str | None = None) -> list[str]:
    """Patch the enabled kernels into `model` (a peft model or a plain HF model) for training
    on `device` (default: where its parameters are now).

    Returns one readable line per kernel: what was fused, what kept PyTorch and why. Raises
    a UserError when implementation is "triton" and Triton (or Liger, for its kernels) cannot
    run. The fused cross-entropy is not a patch: the loop calls linear_cross_entropy_sum with
    `plan_kernels(config, device).ce_implementation`.
    """
    from pipeline.training.kernels import patch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if device is None:
        param = next(base.parameters(), None)
        device = param.device if param is not None else "cpu"
    plan = plan_kernels(config, getattr(device, "type", str(device)), device_name)
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
            lines += patch.apply_fused_lora(model, implementation=choice)
        else:
            lines.append("fused_linear_cross_entropy: Liger's chunked kernel in "
                         "linear_cross_entropy_sum (logits never materialised in full)")
    return lines
