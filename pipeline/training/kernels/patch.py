"""Put the fused kernels into one HF model instance: every replacement made here, nowhere else.

Each patcher replaces the `forward` of module instances (never classes), so a second model in
the same process keeps the plain PyTorch path: that model is the reference the tests compare
with. Replacing `forward` keeps `Module.__call__`, hence every hook on the module: DeepSpeed
ZeRO-3's pre-forward hook gathers the module's parameters before our forward reads them, and
its pre-backward hook gathers them again before the backward. Those hooks gather only a
module's *own* parameters (plus any registered as external): a norm's weight is its own, but
a fused LoRA layer reads its children's (base_layer.weight, lora_A/B.weight), so those are
registered as external parameters of the lora.Linear module. (Marking the layer a ZeRO-3
leaf module instead gathers them in forward but breaks backward: checked with DeepSpeed 0.19.8
ZeRO-3 on the CPU, AccumulateGrad of lora_A then meets a released partition in layers whose
input needs no gradient. With external parameters the loss and the lora_A gradients equal
the reference to ~5e-8.)

Liger's ops (liger_kernel.ops.*) do the RMSNorm, RoPE and SwiGLU work; our Triton kernel
does the LoRA projections (lora_linear.py). Nothing here imports triton or liger at import
time.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import sys
from collections import Counter, defaultdict

import torch
from torch import nn

log = logging.getLogger(__name__)

# RMSNorm classes whose forward we know, and how Liger must reproduce it (casting mode,
# weight offset). Llama-style: only the rstd in fp32, then x.to(dtype) * w. Gemma: all in
# fp32 with (1 + w), cast at the end. A class not listed keeps its own forward.
RMS_NORM_STYLES: dict[str, tuple[str, float]] = {
    "LlamaRMSNorm": ("llama", 0.0),
    "MistralRMSNorm": ("llama", 0.0),
    "Qwen2RMSNorm": ("llama", 0.0),
    "Qwen3RMSNorm": ("llama", 0.0),
    "Phi3RMSNorm": ("llama", 0.0),
    "GemmaRMSNorm": ("gemma", 1.0),
    "Gemma2RMSNorm": ("gemma", 1.0),
    "Gemma3RMSNorm": ("gemma", 1.0),
}
SILU_CLASSES = ("SiLU", "SiLUActivation")
FUSED_LORA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _code_names(function) -> set[str]:
    """Names a function's code uses (attributes, globals), seen through decorators."""
    return set(inspect.unwrap(function).__code__.co_names)


def _summary(kernel: str, done: Counter, skipped: dict[str, Counter]) -> list[str]:
    """Readable lines: what was patched, and each reason something was not, with counts."""
    def counts(c: Counter) -> str:
        return ", ".join(f"{n} {k}" for k, n in sorted(c.items()))

    lines = [f"{kernel}: fused {counts(done)}" if done else f"{kernel}: nothing fused"]
    lines += [f"{kernel}: kept PyTorch for {counts(c)}: {why}" for why, c in skipped.items()]
    return lines


# ---- RMSNorm -------------------------------------------------------------------------------

def patch_rms_norm(model: nn.Module) -> list[str]:
    """Route every known RMSNorm through LigerRMSNormFunction."""
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    done, skipped = Counter(), defaultdict(Counter)
    for module in model.modules():
        kind = type(module).__name__
        if not kind.endswith("RMSNorm"):
            continue
        if kind not in RMS_NORM_STYLES:
            skipped["forward not known to match Liger's (add it to RMS_NORM_STYLES)"][kind] += 1
            continue
        casting_mode, offset = RMS_NORM_STYLES[kind]
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if eps is None or getattr(module, "weight", None) is None:
            skipped["no eps or weight attribute"][kind] += 1
            continue
        module.forward = _rms_norm_forward(module, LigerRMSNormFunction, casting_mode, offset,
                                           float(eps))
        done[kind] += 1
    return _summary("rms_norm", done, skipped)


def _rms_norm_forward(norm, function, casting_mode, offset, eps):
    original = norm.forward

    def forward(hidden_states):
        if casting_mode == "llama" and hidden_states.dtype != norm.weight.dtype:
            # HF's llama-style norm promotes to the weight's dtype here; Liger keeps x's.
            return original(hidden_states)
        # in_place=False: Liger would write dx over dy, which is safe only when no other
        # node reads dy (true for Llama, not for norms on a residual sum, as in Gemma2).
        return function.apply(hidden_states, norm.weight, eps, offset, casting_mode, False)

    return forward


# ---- RoPE ----------------------------------------------------------------------------------

# apply_rotary_pos_emb is a module-level function that attention forwards look up by name.
# The modeling module's name is bound once to a dispatcher that calls the original unless the
# current attention forward belongs to a patched instance (this context variable): other
# models in the process keep the PyTorch rotation. Set per forward, so the recomputation of
# gradient checkpointing (which re-runs the attention forward) takes the same path.
_FUSED_ROPE = contextvars.ContextVar("countrytune_fused_rope", default=False)


class _RopeDispatch:
    def __init__(self, original) -> None:
        self.original = original
        functools.update_wrapper(self, original)

    def __call__(self, q, k, cos, sin, *args, **kwargs):
        # Liger's op is HF's default call: q, k [batch, heads, seq, head_dim], cos/sin
        # [batch, seq, head_dim] unsqueezed at dim 1, the whole head rotated.
        if (not _FUSED_ROPE.get() or args or set(kwargs) - {"unsqueeze_dim"}
                or kwargs.get("unsqueeze_dim", 1) != 1 or q.dim() != 4
                or cos.shape[-1] != q.shape[-1]):
            return self.original(q, k, cos, sin, *args, **kwargs)
        from liger_kernel.ops.rope import LigerRopeFunction

        return LigerRopeFunction.apply(q, k, cos, sin)


def patch_rope(model: nn.Module) -> list[str]:
    """Rotate q and k with Liger's RoPE kernel in every attention that calls apply_rotary_pos_emb."""
    done, skipped = Counter(), defaultdict(Counter)
    for module in model.modules():
        kind = type(module).__name__
        if not (kind.endswith("Attention") and hasattr(module, "q_proj")):
            continue
        modeling = sys.modules[type(module).__module__]
        if ("apply_rotary_pos_emb" not in _code_names(type(module).forward)
                or not hasattr(modeling, "apply_rotary_pos_emb")):
            skipped["forward does not call apply_rotary_pos_emb"][kind] += 1
            continue
        if not isinstance(modeling.apply_rotary_pos_emb, _RopeDispatch):
            modeling.apply_rotary_pos_emb = _RopeDispatch(modeling.apply_rotary_pos_emb)
        module.forward = _with_fused_rope(module.forward)
        done[kind] += 1
    return _summary("rope", done, skipped)


def _with_fused_rope(original):
    def forward(*args, **kwargs):
        token = _FUSED_ROPE.set(True)
        try:
            return original(*args, **kwargs)
        finally:
            _FUSED_ROPE.reset(token)

    return forward


# ---- SwiGLU --------------------------------------------------------------------------------

def patch_swiglu(model: nn.Module) -> list[str]:
    """down(silu(gate(x)) * up(x)) with Liger's SiLU-mul kernel between the projections.

    The projections are called as modules, so LoRA-wrapped (and fused-LoRA) gate/up/down keep
    working; the kernel only sees their outputs. It writes its gradients into those outputs
    in place, which nothing else reads in backward (the fused LoRA op does not save its output,
    nor does peft's).
    """
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    done, skipped = Counter(), defaultdict(Counter)
    for module in model.modules():
        kind = type(module).__name__
        names = {"gate_proj", "up_proj", "down_proj", "act_fn"}
        if not all(hasattr(module, n) for n in names):
            continue
        if type(module.act_fn).__name__ not in SILU_CLASSES:
            skipped[f"activation {type(module.act_fn).__name__} is not SiLU"][kind] += 1
            continue
        if not names <= _code_names(type(module).forward):
            skipped["forward is not down(act(gate(x)) * up(x))"][kind] += 1
            continue
        module.forward = _swiglu_forward(module, LigerSiLUMulFunction)
        done[kind] += 1
    return _summary("swiglu", done, skipped)


def _swiglu_forward(mlp, function):
    def forward(x):
        return mlp.down_proj(function.apply(mlp.gate_proj(x), mlp.up_proj(x)))

    return forward


# ---- LoRA projections ----------------------------------------------------------------------

def apply_fused_lora(model: nn.Module, implementation: str = "triton") -> list[str]:
    """Run every qualifying peft lora.Linear through the fused projection (lora_linear.py: our
    Triton GEMM, or "torch", the same fusion in PyTorch ops); log why others do not.

    The fused path takes a layer when: it is peft's plain lora.Linear over an nn.Linear (no
    quantised base such as bitsandbytes), not fan_in_fan_out; one active adapter, present on
    the layer; lora_dropout 0; no DoRA or other LoRA variant; no lora_bias; base weight frozen
    and fp16/bf16/fp32, base bias absent or frozen (bias="none"); adapter weights in the base
    dtype or fp32. At call time it also needs: adapters enabled and not merged, no extra
    forward arguments (adapter_names, ...), x in the base dtype (or autocast on, in which case
    x, W and the adapters are cast to the autocast dtype as F.linear would). Anything else
    runs peft's own forward; the reason is logged once per layer kind.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    done, skipped = Counter(), defaultdict(Counter)
    warned: set[tuple[str, str]] = set()
    zero3 = False
    for name, module in model.named_modules():
        if not isinstance(module, LoraLinear):
            continue
        kind = name.rsplit(".", 1)[-1]
        reason = _static_reason(module, LoraLinear)
        if reason is not None:
            skipped[reason][kind] += 1
            if (kind, reason) not in warned:
                warned.add((kind, reason))
                log.warning("fused LoRA: %s layers stay on peft's forward: %s", kind, reason)
            continue
        zero3 |= _register_zero3_external(module)
        module.forward = _fused_lora_forward(module, kind, warned, implementation)
        done[kind] += 1
    lines = _summary("lora" if implementation == "triton" else f"lora ({implementation})", done, skipped)
    if zero3:
        lines.append("lora: ZeRO-3: base and adapter weights registered as external parameters "
                     "of each fused layer")
    return lines


def _register_zero3_external(layer) -> bool:
    """Under ZeRO-3, make DeepSpeed gather the weights the fused forward reads directly.

    ZeRO-3 is recognised by partitioned parameters (loaded under zero.Init) or by HF's
    is_deepspeed_zero3_enabled() (accelerate's DeepSpeed plugin, before deepspeed.initialize
    partitions the model). DeepSpeed reads the external parameters whenever it gathers, so
    this also holds when the engine already exists.
    """
    # Every adapter's: a DPO run switches its frozen reference copy in for one pass.
    adapters = [w for name in layer.lora_A for w in (layer.lora_A[name].weight, layer.lora_B[name].weight)]
    params = [p for p in (layer.base_layer.weight, layer.base_layer.bias, *adapters) if p is not None]
    if not any(hasattr(p, "ds_id") for p in params):
        try:
            from transformers.integrations import is_deepspeed_zero3_enabled
        except ImportError:
            return False
        if not is_deepspeed_zero3_enabled():
            return False
    import deepspeed  # deepspeed.zero is an attribute of the package, not a module

    for p in params:
        deepspeed.zero.register_external_parameter(layer, p)
    return True


def _static_reason(layer, lora_linear_cls) -> str | None:
    """Why this layer can never take the fused path, or None."""
    if type(layer) is not lora_linear_cls:
        return f"{type(layer).__name__} is not peft's plain lora.Linear"
    base = layer.get_base_layer()
    if type(base) is not nn.Linear:
        return f"base layer {type(base).__name__} is not nn.Linear (quantised or custom)"
    if getattr(layer, "fan_in_fan_out", False):
        return "fan_in_fan_out weights"
    if len(layer.active_adapters) != 1:
        return f"{len(layer.active_adapters)} active adapters (the kernel adds one)"
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A:
        return f"adapter {adapter!r} is not on this layer"
    dropout = layer.lora_dropout[adapter]
    if not isinstance(dropout, nn.Identity):
        return f"lora_dropout p={getattr(dropout, 'p', '?')} (the kernel has no dropout)"
    if adapter in getattr(layer, "lora_variant", {}) or layer.use_dora.get(adapter, False):
        return "DoRA or another LoRA variant"
    if getattr(layer, "lora_bias", {}).get(adapter, False):
        return "lora_bias=True"
    if base.weight.requires_grad:
        return "base weight is trainable"
    if base.bias is not None and base.bias.requires_grad:
        return "base bias is trainable (bias != 'none')"
    if base.weight.dtype not in FUSED_LORA_DTYPES:
        return f"base weight dtype {base.weight.dtype}"
    a_dtype, b_dtype = layer.lora_A[adapter].weight.dtype, layer.lora_B[adapter].weight.dtype
    if a_dtype != b_dtype or a_dtype not in (base.weight.dtype, torch.float32):
        return f"adapter dtypes {a_dtype}/{b_dtype} with a {base.weight.dtype} base"
    return None


def _call_reason(layer, x, args, kwargs) -> str | None:
    """Why this call cannot take the fused path (adapters switched since patching, ...)."""
    if args or kwargs:
        return "extra forward arguments (adapter_names, ...)"
    if layer.disable_adapters or layer.merged:
        return "adapters disabled or merged"
    if len(layer.active_adapters) != 1 or layer.active_adapters[0] not in layer.lora_A:
        return "active adapters changed since the kernels were applied"
    if not torch.is_autocast_enabled(x.device.type) and x.dtype != layer.base_layer.weight.dtype:
        return f"input dtype {x.dtype} differs from the base weight's"
    return None


def _fused_lora_forward(layer, kind: str, warned: set, implementation: str):
    from pipeline.training.kernels.lora_linear import FusedLoraLinear

    original = layer.forward

    def forward(x, *args, **kwargs):
        reason = _call_reason(layer, x, args, kwargs)
        if reason is not None:
            if (kind, reason) not in warned:
                warned.add((kind, reason))
                log.warning("fused LoRA: %s call runs peft's forward: %s", kind, reason)
            return original(x, *args, **kwargs)
        adapter = layer.active_adapters[0]
        base = layer.base_layer
        weight, bias = base.weight, base.bias
        lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        if weight.numel() == 0:
            raise RuntimeError(f"fused LoRA {kind}: the base weight is an empty ZeRO-3 partition; "
                               "DeepSpeed did not gather it (ZeRO-3 not detected when the "
                               "kernels were applied?)")
        if torch.is_autocast_enabled(x.device.type):
            # What autocast does to F.linear in peft's forward, done once here; the op itself
            # then runs with autocast off so that its matmuls keep these dtypes.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, lora_a, lora_b = (t.to(dtype) for t in (x, weight, lora_a, lora_b))
            bias = bias.to(dtype) if bias is not None else None
            with torch.autocast(x.device.type, enabled=False):
                return FusedLoraLinear.apply(x, weight, bias, lora_a, lora_b,
                                             float(layer.scaling[adapter]), implementation)
        return FusedLoraLinear.apply(x, weight, bias, lora_a, lora_b, float(layer.scaling[adapter]),
                                     implementation)

    return forward
