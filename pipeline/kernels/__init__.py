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

from pipeline.kernels.backend import (
    interpreting,
    liger_problem,
    resolve_implementation,
    triton_problem,
)
from pipeline.kernels.cross_entropy import gathered_for_read, linear_cross_entropy_sum
from pipeline.recipe import KernelsConfig  # the recipe's schema; light to import

__all__ = ["KernelsConfig", "apply_kernels", "gathered_for_read", "linear_cross_entropy_sum",
           "resolve_implementation"]

LIGER_KERNELS = ("rms_norm", "rope", "swiglu")


def apply_kernels(model, config: KernelsConfig) -> list[str]:
    """Patch the enabled kernels into `model` (a peft model or a plain HF model).

    Returns one readable line per kernel: what was fused, what kept PyTorch and why. Raises
    a UserError when implementation is "triton" and Triton (or Liger, for its kernels) cannot
    run. The fused cross-entropy is not a patch: the loop calls linear_cross_entropy_sum with
    resolve_implementation(config).
    """
    from countrytune.errors import UserError
    from pipeline.kernels import patch

    enabled = [k for k in (*LIGER_KERNELS, "fused_linear_cross_entropy", "lora")
               if getattr(config, k)]
    if not enabled:
        return ["no kernels enabled: plain PyTorch"]
    impl = resolve_implementation(config)
    if impl == "reference":
        why = ("implementation=reference" if config.implementation == "reference"
               else triton_problem())
        return [f"{k}: PyTorch reference ({why})" for k in enabled]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    param = next(base.parameters(), None)
    if param is not None and param.device.type != "cuda" and not interpreting():
        why = f"the model is on {param.device.type}, Triton kernels need CUDA"
        if config.implementation == "triton":
            raise UserError(f"kernels.implementation is 'triton' but {why}")
        return [f"{k}: PyTorch reference ({why})" for k in enabled]

    lines: list[str] = []
    liger = liger_problem()
    for kernel in enabled:
        if kernel in (*LIGER_KERNELS, "fused_linear_cross_entropy") and liger is not None:
            if config.implementation == "triton":
                raise UserError(f"kernels.{kernel} with implementation 'triton': {liger}")
            lines.append(f"{kernel}: PyTorch reference ({liger})")
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
