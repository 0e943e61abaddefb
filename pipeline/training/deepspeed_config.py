"""A DeepSpeed config rendered from the recipe, so the recipe alone decides ZeRO.

The same dicts exist as files under launch/deepspeed/ with "auto" where accelerate fills the
value in; here the values come from the recipe. `countrytune train --print-deepspeed` shows it.
"""

from __future__ import annotations

from typing import Any

from countrytune.artifacts.recipe import DeepSpeedSpec, TrainRecipe


def render(spec: DeepSpeedSpec, recipe: TrainRecipe, *, bf16: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": spec.stage,
        "overlap_comm": spec.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": spec.reduce_bucket_size,
    }
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": spec.stage3_prefetch_bucket_size,
            # Small tensors (norms, LoRA factors) stay whole on every process: gathering them
            # costs more in latency than they save in memory.
            "stage3_param_persistence_threshold": 100_000,
            # countrytune gathers what it saves itself (pipeline/training/trained_weights.py: the adapter
            # whole, a full model one parameter at a time); DeepSpeed's gather at save time
            # would put all 16-bit weights on one process at once.
            "stage3_gather_16bit_weights_on_model_save": False,
        })
        if spec.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    t = recipe.training
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": recipe.optim.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # countrytune logs; DeepSpeed's own prints would interleave
        "wall_clock_breakdown": False,
    }
