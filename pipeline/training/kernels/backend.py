"""Which implementation runs the kernels: Triton (on CUDA or under the interpreter) or PyTorch.

Nothing here imports triton or liger-kernel: `import pipeline.training.kernels` must work on a machine
without them, and the choice is made when the kernels are applied, never at import time.
"""

from __future__ import annotations

import importlib.util
import os

from countrytune.errors import UserError


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1).

    Triton reads the variable when a kernel is decorated, i.e. when its module is imported, so
    it must be set before the first import of triton (the tests do so in a subprocess).
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_problem(device_type: str | None = None) -> str | None:
    """Why Triton kernels cannot run for a model on `device_type` ("cuda", "cpu"; default:
    whether this process has a CUDA device), or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'countrytune[kernels]')"
    if interpreting():
        return None
    if device_type is not None:
        return None if device_type == "cuda" else \
            f"the model trains on {device_type}; Triton kernels need CUDA (or TRITON_INTERPRET=1)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is available and TRITON_INTERPRET=1 is not set"
    return None


def liger_problem() -> str | None:
    """Why Liger's kernels (RMSNorm, RoPE, SwiGLU, fused linear CE) are unavailable, or None."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install 'countrytune[kernels]')"
    return None


def resolve_implementation(config) -> str:
    """'triton' or 'reference' for a KernelsConfig (or its `implementation` string).

    auto picks Triton when it can run and the reference otherwise; triton raises a UserError
    naming the reason when it cannot run.
    """
    choice = config if isinstance(config, str) else config.implementation
    if choice not in ("auto", "triton", "reference"):
        raise ValueError(f"kernel implementation must be auto, triton or reference, not {choice!r}")
    if choice == "reference":
        return "reference"
    problem = triton_problem()
    if problem is None:
        return "triton"
    if choice == "triton":
        raise UserError(f"kernels.implementation is 'triton' but {problem}; "
                        "set kernels.implementation to auto or reference")
    return "reference"
