"""Run the Triton kernels (Liger's and ours) on the CPU through Triton's interpreter.

Triton decides per kernel, when the kernel's module is imported, whether it is compiled for a
GPU or run by the interpreter: it reads TRITON_INTERPRET at decoration time. So `enable()`
sets the variable, imports every kernel module the tests use, installs two shims, and then
restores the environment: the kernels stay interpreted for this process, while the rest of the
suite (same pytest process) still sees no TRITON_INTERPRET, so `implementation: auto` keeps
meaning the PyTorch reference there. The kernel tests set the variable again while they run
(`interpreter_env` fixture), because a few interpreter code paths read it at call time.

enable() must run before anything imports triton; the kernel test modules call it at import
(collection, when nothing in this suite has imported triton yet). If triton was imported
first, the kernels are compiled for a GPU that is not there, and `problem()` says so.

The shims (Liger 0.8.5, Triton 3.9 interpreter):
1. Python float kernel arguments reach an interpreted kernel as Python floats, while compiled
   Triton turns them into fp32 scalars; Liger's RMSNorm and SwiGLU kernels call `.to()` on
   such arguments (eps, offset, gate_multiplier). The interpreter's argument conversion is
   wrapped so floats become fp32 scalar tensors, as compiled Triton makes them.
2. Liger's RMSNorm imports `rsqrt` from `triton.language.extra.libdevice`, which the
   interpreter implements as an empty stub; it is rebound to a function calling `tl.rsqrt`
   (the same operation, which the interpreter does implement).
3. Liger's cross-entropy imports `tanh` (soft-capping, Gemma-2) from the same stub library; it
   is rebound to 2 sigmoid(2x) - 1 in `triton.language` operations.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# Every module holding a Triton kernel the kernel tests run, imported under the interpreter.
KERNEL_MODULES = (
    "liger_kernel.ops.rms_norm",
    "liger_kernel.ops.rope",
    "liger_kernel.ops.swiglu",
    "liger_kernel.ops.cross_entropy",
    "liger_kernel.ops.fused_linear_cross_entropy",
    "liger_kernel.transformers.functional",
    "pipeline.training.kernels._lora_triton",
)

_problem: str | None = "enable() has not run"


def enable() -> None:
    """Import the kernel modules as interpreted kernels and install the shims (idempotent)."""
    global _problem
    if _problem is None:
        return
    already = "triton" in sys.modules
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import importlib

        for name in KERNEL_MODULES:
            importlib.import_module(name)
        _install_shims()
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before
    import triton.language.standard
    from triton.runtime.interpreter import InterpretedFunction

    from pipeline.training.kernels import _lora_triton

    # Triton's own library (tl.cdiv, ...) must be interpreted too, not only our kernels.
    if all(isinstance(f, InterpretedFunction) for f in (
            triton.language.standard.cdiv, _lora_triton.matmul_plus_low_rank_kernel)):
        _problem = None
    else:
        _problem = ("triton was imported before tests/kernel_interpreter.py could turn on its "
                    f"interpreter (already imported: {already}); run the kernel tests on their "
                    "own: pytest tests/test_kernels.py tests/test_kernels_convergence.py")


def enable_or_skip() -> None:
    """enable(), or skip the calling test module when triton or liger-kernel is missing.

    Checked with find_spec: importing triton to see whether it is there would decide its
    interpreter mode too early.
    """
    import pytest

    for name in ("triton", "liger_kernel", "peft", "transformers"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install 'countrytune[kernels]')",
                        allow_module_level=True)
    enable()


def interpreter_env(monkeypatch):
    """Body of the kernel test modules' autouse fixture: fail when the kernels cannot run
    interpreted, and set TRITON_INTERPRET while each test runs."""
    why = problem()
    if why:
        import pytest

        pytest.fail(why)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def problem() -> str | None:
    """Why the kernels cannot run interpreted in this process, or None."""
    return _problem


def _install_shims() -> None:
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    if not getattr(interpreter._implicit_cvt, "countrytune_shim", False):
        original = interpreter._implicit_cvt

        def implicit_cvt(arg):
            if isinstance(arg, float):  # shim 1: as compiled Triton does, fp32 scalar
                handle = interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32)
                return tl.tensor(handle, tl.float32)
            return original(arg)

        implicit_cvt.countrytune_shim = True
        interpreter._implicit_cvt = implicit_cvt

    import liger_kernel.ops.rms_norm as liger_rms_norm

    liger_rms_norm.rsqrt = _rsqrt  # shim 2

    import liger_kernel.ops.cross_entropy as liger_ce

    liger_ce.tanh = _tanh  # shim 3


def _rsqrt(x):
    """tl.rsqrt looked up at call time: the interpreter swaps triton.language's functions for
    numpy ones while a kernel runs, which a name bound at import would miss."""
    import triton.language as tl

    return tl.rsqrt(x)


def _tanh(x):
    """tanh from operations the interpreter implements (looked up at call time, as _rsqrt)."""
    import triton.language as tl

    return 2 * tl.sigmoid(2 * x) - 1
