"""Activation checkpointing only where memory needs it (`training.gradient_checkpointing: auto`).

Recomputing every layer's forward in backward costs a third more compute; issue 23 measured a
~1B model 1.36x faster without it, on a GPU whose memory never needed it. So `auto` measures
what one step's activations take and recomputes only as many layers as the device cannot hold:

1. measure: forwards of the training loss on one row at two short lengths under
   `saved_tensors_hooks`, counting every tensor autograd keeps for backward (each storage
   once, parameters left out), with no layer recomputed; fitted as a T + b T^2 (the T^2 part is
   an attention matrix a math SDPA kernel keeps; flash and varlen keep none), that scales to
   the real micro-batch;
2. budget: what the device can still give (CUDA: total - allocated, 10% kept back; CPU:
   available RAM, 20% kept back), less the optimiser's state and gradients still to come, or
   `training.activation_memory_gib` when the recipe sets it;
3. choose the fewest recomputed layers k so that the kept layers' activations, the recomputed
   layers' inputs, one layer's recomputation and the loss's transient fit.

Recomputation changes no number: the same kernels recompute the same activations, so a run
gives the same losses whichever k it takes (tests/test_activation_memory.py checks torch.equal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 2**30


@dataclass(frozen=True)
class ActivationEstimate:
    layers: int
    per_layer_bytes: float
    """One decoder layer's saved activations for one micro-batch, nothing recomputed."""
    outside_bytes: float
    """Saved outside the decoder layers (embedding output, final norm, output head and loss)."""
    layer_input_bytes: float
    """What a recomputed layer keeps: its input hidden states."""

    def needed(self, recomputed: int) -> float:
        kept = self.layers - recomputed
        transient = self.per_layer_bytes if recomputed else 0.0  # one layer recomputed at a time
        return (self.outside_bytes * 1.5  # the loss's logits gradient lives beside them in backward
                + kept * self.per_layer_bytes + recomputed * self.layer_input_bytes + transient)


def layers_to_recompute(estimate: ActivationEstimate, budget_bytes: float) -> int:
    """The fewest layers to recompute so that the step fits `budget_bytes` (all of them when
    nothing fits: the most that recomputation can save)."""
    for k in range(estimate.layers + 1):
        if estimate.needed(k) <= budget_bytes:
            return k
    return estimate.layers


def decoder_layers(causal_lm) -> list[torch.nn.Module]:
    """The checkpointable decoder layers of a Hugging Face causal LM."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in causal_lm.modules() if isinstance(m, GradientCheckpointingLayer)]


def _saved_bytes(loss_model, batch: dict) -> tuple[float, float]:
    """(bytes saved for backward inside decoder layers, bytes saved outside them) by one forward
    of `loss_model` on `batch`. Each storage counted once; parameters and buffers are not
    activations."""
    layers = decoder_layers(loss_model.causal_lm())
    frozen = {p.untyped_storage().data_ptr() for p in loss_model.parameters()}
    frozen |= {b.untyped_storage().data_ptr() for b in loss_model.buffers()}
    seen: set[int] = set()
    inside = outside = 0.0
    depth = [0]

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1

    def pack(t):
        nonlocal inside, outside
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key and key not in seen and key not in frozen and t.device.type != "meta":
            seen.add(key)
            if depth[0]:
                inside += storage.nbytes()
            else:
                outside += storage.nbytes()
        return t

    handles = [h for layer in layers for h in (layer.register_forward_pre_hook(enter),
                                                layer.register_forward_hook(leave))]
    device = batch["input_ids"].device
    try:
        # Dropout draws random numbers: the probe must leave the generators where training
        # expects them, or a run with the probe trains on other masks than one without.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = loss_model(**batch)
            del loss  # the graph goes with it; no backward
    finally:
        for h in handles:
            h.remove()
    return inside, outside


def estimate_activations(loss_model, batch: dict, micro_batch: int, sequence_length: int,
                         probe_length: int = 256) -> ActivationEstimate:
    """Measure forwards of one row of `batch` cut to probe_length/2 and probe_length tokens,
    with no layer recomputed, fit bytes = a T + b T^2 per row (b is the attention matrix an
    SDPA math kernel keeps; 0 for flash and varlen), and scale to micro_batch rows of
    sequence_length. A row no longer than the probe is measured as it is."""
    causal_lm = loss_model.causal_lm()
    layers = decoder_layers(causal_lm)
    saved = [(layer, layer.gradient_checkpointing) for layer in layers]
    try:
        for layer in layers:
            layer.gradient_checkpointing = False
        if sequence_length <= probe_length:
            inside, outside = _saved_bytes(loss_model, _probe(batch, sequence_length))
        else:
            short, long_ = probe_length // 2, probe_length
            measured = [_saved_bytes(loss_model, _probe(batch, n)) for n in (short, long_)]
            inside, outside = (_extrapolate(short, long_, a, b, sequence_length)
                               for a, b in zip(*measured, strict=True))
    finally:
        for layer, flag in saved:
            layer.gradient_checkpointing = flag
    hidden = causal_lm.config.get_text_config().hidden_size
    dtype_bytes = next(causal_lm.parameters()).element_size()
    return ActivationEstimate(
        layers=len(layers), per_layer_bytes=inside * micro_batch / max(len(layers), 1),
        outside_bytes=outside * micro_batch,
        layer_input_bytes=micro_batch * sequence_length * hidden * dtype_bytes)


def _probe(batch: dict, length: int) -> dict:
    """The first `length` tokens of the batch's first row, as two documents: positions restart
    halfway, so attention takes the packed-rows path training rows take (with SDPA, a dense mask
    and the math kernel; a row holding one document would take the cheaper causal kernel)."""
    half = length // 2
    device = batch["input_ids"].device
    pos = torch.cat([torch.arange(half, device=device), torch.arange(length - half, device=device)])
    return {"input_ids": batch["input_ids"][:1, :length], "labels": batch["labels"][:1, :length],
            "position_ids": pos[None]}


def _extrapolate(t1: int, t2: int, bytes1: float, bytes2: float, t: int) -> float:
    """bytes(t) = a t + b t^2 through (t1, bytes1) and (t2, bytes2); b >= 0."""
    b = max(0.0, (bytes2 / t2 - bytes1 / t1) / (t2 - t1))
    a = bytes2 / t2 - b * t2
    return a * t + b * t * t


def memory_budget(device: torch.device, trainable_params: int) -> float:
    """Bytes the activations may take on `device`: what is free now, less a margin, less the
    AdamW state and gradients of the trainable parameters (not yet allocated before step 1)."""
    later = trainable_params * 12  # fp32 gradient + two fp32 Adam moments (upper bound)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total * 0.9 - torch.cuda.memory_allocated(device) - later
    import psutil

    return psutil.virtual_memory().available * 0.8 - later


def set_recomputed_layers(causal_lm, recomputed: int) -> None:
    """Recompute the first `recomputed` decoder layers in backward, keep the rest."""
    layers = decoder_layers(causal_lm)
    if recomputed and not any(layer.gradient_checkpointing for layer in layers):
        enable = getattr(causal_lm, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.x; the older name warns it is deprecated
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < recomputed


def describe(estimate: ActivationEstimate, budget: float, recomputed: int, why: str) -> str:
    return (f"activation checkpointing auto: {size(estimate.needed(0))} of activations without "
            f"recomputation, {size(budget)} {why}: recompute {recomputed} of {estimate.layers} layers"
            + (f", {size(estimate.needed(recomputed))} then" if recomputed else " (none)"))


def size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.1f} MiB"
