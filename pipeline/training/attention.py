"""Attention on packed rows: documents kept apart by cumulative sequence lengths, not a mask.

Training rows hold several documents, their positions restarting at 0 (packing.py). Given
only position ids, Hugging Face's SDPA path builds a dense block-diagonal [rows, 1, T, T] mask
per forward, and a masked SDPA cannot take the flash kernel: on CUDA it runs the
memory-efficient or the math kernel (issue 23's slow path). The implementation registered here,
`countrytune_varlen`, takes the documents' boundaries once per micro-batch (`packed_kwargs`,
one host sync) and on CUDA calls torch's own varlen FlashAttention
(torch.nn.attention.varlen.varlen_attn, in torch since 2.10: no new dependency), over all rows
flattened, causal within each document. It is exact, not an approximation: the same
softmax over the same keys.

Elsewhere it stays correct: without the boundaries (held-out scoring of the trained model,
generation, padded batches) it is HF's SDPA with HF's mask; on the CPU or in fp32, where the
flash kernel does not run, it is SDPA with the block-diagonal causal mask built from the
boundaries (the reference the tests compare with, and what HF's SDPA path computes).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect

import torch
import torch.nn.functional as F

VARLEN = "countrytune_varlen"
# Implementations the training loss hands the boundaries to (HF's FlashAttention 2 reads the
# same keyword arguments).
PACKED_ATTENTION = (VARLEN, "flash_attention_2")

# Set around the decoder's forward by the training loss when it passes the boundaries, so the
# mask builder skips the dense mask nobody will read. Read once per forward, when the model
# builds its mask (not inside checkpointed layers, whose recomputation replays the arguments).
_PACKED_FORWARD = contextvars.ContextVar("countrytune_packed_forward", default=False)


def packed_kwargs(position_ids: torch.Tensor) -> dict:
    """Boundaries of the documents in a micro-batch, from positions restarting at 0, for every
    layer of one forward: cu_seq_lens over the rows flattened (int32), and the longest
    document (the one host sync). Names are the ones HF's attention kwargs use."""
    rows, length = position_ids.shape
    flat = position_ids.reshape(-1)
    # A document starts where its positions restart, and every row starts one: a row that
    # continues a document (no 0 at its start) must not attend into the row before it.
    row_start = torch.arange(flat.numel(), device=flat.device) % length == 0
    starts = torch.nonzero((flat == 0) | row_start).flatten()
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


@contextlib.contextmanager
def packed_forward(active: bool = True):
    token = _PACKED_FORWARD.set(active)
    try:
        yield
    finally:
        _PACKED_FORWARD.reset(token)


@functools.lru_cache(maxsize=None)
def _varlen_signature() -> frozenset[str] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return frozenset(inspect.signature(varlen_attn).parameters)


def varlen_problem(device_index: int | None = None) -> str | None:
    """Why torch's varlen FlashAttention cannot run on this process's CUDA device (or the one
    given), or None: tried once per device on a tiny causal GQA problem in bf16 against SDPA."""
    if _varlen_signature() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return _varlen_problem_on(torch.cuda.current_device() if device_index is None else device_index)


@functools.lru_cache(maxsize=None)
def _varlen_problem_on(device_index: int) -> str | None:
    device = torch.device("cuda", device_index)
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(1, 4, 24, 64, device=device, dtype=torch.bfloat16, generator=g)
        k, v = (torch.randn(1, 2, 24, 64, device=device, dtype=torch.bfloat16, generator=g) for _ in range(2))
        pos = torch.cat([torch.arange(10), torch.arange(14)]).to(device)[None]
        q.requires_grad_()
        got = _varlen(q, k, v, packed_kwargs(pos), 64 ** -0.5)
        got.sum().backward()  # training needs the backward kernel too
        want = _block_causal_sdpa(q, k, v, packed_kwargs(pos), 64 ** -0.5)
        err = ((got.float() - want.float()).norm() / want.float().norm()).item()
    except Exception as e:  # noqa: BLE001 (any failure means: do not use it)
        return f"torch's varlen_attn failed on {torch.cuda.get_device_name(device)}: {type(e).__name__}: {e}"
    if not err < 2e-2:  # bf16: a few roundoffs (2^-8) apart; a wrong kernel is off by order 1
        return f"torch's varlen_attn disagrees with SDPA (relative error {err:.2g})"
    return None


def _varlen(q, k, v, boundaries: dict, scaling: float | None) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, T, D] -> [B, T, Hq, D] through torch's varlen kernel."""
    from torch.nn.attention.varlen import varlen_attn

    b, hq, t, d = q.shape
    hkv = k.shape[1]
    params = _varlen_signature()
    q_, k_, v_ = (x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (q, k, v))
    extra = {"scale": scaling} if "scale" in params else {}
    if "scale" not in params and scaling is not None and abs(scaling - d ** -0.5) > 1e-12:
        q_ = q_ * (scaling * d ** 0.5)  # torch 2.10 has no scale: fold a model's own into q
    if hq != hkv:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:  # torch 2.10/2.11: share the kv heads by copying them
            k_, v_ = (x.repeat_interleave(hq // hkv, dim=1) for x in (k_, v_))
    # torch 2.10 took is_causal (and no scale); later versions express causality as window (-1, 0).
    extra.update({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})
    cu = boundaries["cu_seq_lens_q"]
    out = varlen_attn(q_, k_, v_, cu, cu, boundaries["max_length_q"], boundaries["max_length_q"], **extra)
    return out.view(b, t, hq, d)


def _block_causal_sdpa(q, k, v, boundaries: dict, scaling: float | None) -> torch.Tensor:
    """The reference: SDPA with a block-diagonal causal mask from the same boundaries."""
    b, hq, t, _ = q.shape
    cu = boundaries["cu_seq_lens_q"].to(q.device, torch.long)
    doc = torch.searchsorted(cu[1:], torch.arange(b * t, device=q.device), right=True).view(b, t)
    pos = torch.arange(t, device=q.device)
    mask = (doc[:, :, None] == doc[:, None, :]) & (pos[None, :, None] >= pos[None, None, :])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scaling,
                                         enable_gqa=k.shape[1] != hq)
    return out.transpose(1, 2)


def packed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """HF attention-interface function (returns output [B, T, H, D] and no weights)."""
    if kwargs.get("cu_seq_lens_q") is None:  # not the training loss's packed forward
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if dropout:
        raise ValueError("countrytune_varlen attention has no dropout; set the model's attention_dropout to 0")
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and varlen_problem(query.device.index) is None:
        return _varlen(query, key, value, kwargs, scaling).contiguous(), None
    return _block_causal_sdpa(query, key, value, kwargs, scaling).contiguous(), None


def _packed_mask(*args, **kwargs):
    """No mask for the training loss's packed forward (the boundaries replace it); HF's SDPA
    mask otherwise."""
    if _PACKED_FORWARD.get():
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def register() -> str:
    """Make `countrytune_varlen` an attention implementation transformers knows (idempotent);
    returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, packed_attention_forward)
    AttentionMaskInterface.register(VARLEN, _packed_mask)
    return VARLEN
