"""The module the loop trains for `task: dpo`: forward returns the summed DPO loss over the
preference pairs of a micro-batch.

A row holds whole pairs (packing.layout_pairs): each pair's chosen answer's chat, then its
rejected answer's, positions restarting at each, so the row's segments 2k and 2k+1 are pair
k. The policy is the base with the adapter. The reference is scored without gradients inside
the same forward, on the same base weights, so DDP and DeepSpeed see one forward per
micro-batch and no second copy of the model is ever made: either the model the run started
from (preference.reference initial: the frozen copy of lora.init_from's adapter switched in,
REFERENCE_ADAPTER) or the base (the adapter switched off, peft's disable_adapter). The loss
(Rafailov et al., 2023):

    -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

with log pi(answer) the summed log-probability of the answer's target tokens. label_smoothing
> 0 gives conservative DPO (Mitchell, 2023); chosen_nll > 0 adds that weight times the chosen
answer's negative log-likelihood per target token (Pang et al., 2024). Segments without targets (row padding, empty
evaluation rows) are no pair and count for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.loss import decoder_hidden, output_transform_of


REFERENCE_ADAPTER = "reference"
"""The frozen adapter a run that starts from lora.init_from holds as its DPO reference."""


def segments(position_ids) -> torch.Tensor:
    """Each token's segment in its row: positions restart at 0 at each chat (and at padding)."""
    return torch.cumsum(position_ids == 0, dim=1) - 1


def per_segment(values, position_ids) -> torch.Tensor:
    """(rows, segments) sums of per-token values over each segment."""
    seg = segments(position_ids)
    out = torch.zeros(seg.shape[0], int(seg.max()) + 2, dtype=values.dtype, device=values.device)
    return out.scatter_add_(1, seg, values)


def pair_sides(per_seg) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected): segments 2k and 2k+1 of each row, as (rows, pairs)."""
    n = per_seg.shape[1] // 2
    return per_seg[:, 0:2 * n:2], per_seg[:, 1:2 * n:2]


def pair_targets(labels, position_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected): each side's count of target tokens, as (rows, pairs)."""
    return pair_sides(per_segment((labels != -100).float(), position_ids))


def both_sides_present(chosen_tokens, rejected_tokens) -> torch.Tensor:
    """(rows, pairs): True where both sides of a pair have targets (pair_targets' counts)."""
    return (chosen_tokens > 0) & (rejected_tokens > 0)


def pair_mask(labels, position_ids) -> torch.Tensor:
    """(rows, pairs): True where both sides of a pair have targets."""
    return both_sides_present(*pair_targets(labels, position_ids))


def pairs_in(batch) -> int:
    """What the DPO loss is divided by: the pairs of the batch."""
    return int(pair_mask(batch["labels"], batch["position_ids"]).sum())


class PreferenceLossModel(nn.Module):
    def __init__(self, model, beta: float, label_smoothing: float = 0.0, chosen_nll: float = 0.0) -> None:
        super().__init__()
        self.model = model  # the peft model: its adapter is the policy's difference from the base
        self.beta, self.label_smoothing, self.chosen_nll = beta, label_smoothing, chosen_nll
        self.reference_adapter = REFERENCE_ADAPTER if REFERENCE_ADAPTER in model.peft_config else None
        # The layers whose active adapter the reference pass switches: found once, not per forward.
        self._adapter_layers = _adapter_layers(model) if self.reference_adapter else []
        self.scale, self.softcap = output_transform_of(self.causal_lm().config)
        # Summed since the last take_window(), apart for training and evaluation (an evaluation
        # between two log lines must not mix into the training window): pairs, pairs whose
        # implicit reward prefers the chosen answer, and the reward margins.
        self._windows: dict[bool, torch.Tensor] = {}

    def causal_lm(self):
        return self.model.get_base_model()

    def answer_logps(self, input_ids, labels, position_ids) -> torch.Tensor:
        """(rows, segments): summed log-probability of each segment's target tokens."""
        from pipeline.training.kernels.cross_entropy import output_transform

        base = self.causal_lm()
        hidden = decoder_hidden(base, input_ids, position_ids)
        logits = output_transform(base.get_output_embeddings()(hidden), scale=self.scale,
                                  softcap=self.softcap).float()
        token_logp = -F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none",
                                      ignore_index=-100).view(labels.shape)
        return per_segment(token_logp, position_ids)

    def forward(self, input_ids, labels, position_ids):
        policy = self.answer_logps(input_ids, labels, position_ids)
        with torch.no_grad(), self.reference():
            reference = self.answer_logps(input_ids, labels, position_ids)
        chosen, rejected = pair_sides(policy - reference)
        margin = self.beta * (chosen - rejected)
        chosen_tokens, rejected_tokens = pair_targets(labels, position_ids)
        present = both_sides_present(chosen_tokens, rejected_tokens)
        ls = self.label_smoothing
        losses = -(1 - ls) * F.logsigmoid(margin) - ls * F.logsigmoid(-margin)
        if self.chosen_nll:
            chosen_logp, _ = pair_sides(policy)
            losses = losses - self.chosen_nll * chosen_logp / chosen_tokens.clamp(min=1)
        losses = torch.where(present, losses, torch.zeros_like(losses))
        self._add_window(present, margin.detach())
        return losses.sum()

    def reference(self):
        """The reference model for the block: the starting adapter switched in, or none."""
        if self.reference_adapter is None:
            return self.model.disable_adapter()
        return _lora_switched_to(self._adapter_layers, self.reference_adapter)

    def _add_window(self, present, margin) -> None:
        sums = torch.stack([present.sum(), (present & (margin > 0)).sum(),
                            torch.where(present, margin, torch.zeros_like(margin)).sum()]).double()
        earlier = self._windows.get(self.training)
        self._windows[self.training] = sums if earlier is None else earlier + sums

    def take_window(self, training: bool) -> torch.Tensor:
        """This process's (pairs, pairs preferred as the data prefers them, summed reward
        margins) since the last call, in training or in evaluation; sum them over processes,
        then `window_metrics`."""
        sums = self._windows.pop(training, None)
        return sums if sums is not None else torch.zeros(3, dtype=torch.float64)


def _adapter_layers(peft_model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def _lora_switched_to(layers: list, name: str) -> Iterator[None]:
    """The adapter layers run adapter `name` for the block. Sets the layers' active adapter
    directly: peft's set_adapter would also flip requires_grad, turning the trained adapter's
    gradients off between its forward and its backward."""
    before = [m._active_adapter for m in layers]
    for m in layers:
        m._active_adapter = [name]
    try:
        yield
    finally:
        for m, active in zip(layers, before):
            m._active_adapter = active


def window_metrics(sums: torch.Tensor) -> dict[str, float]:
    """Share of pairs the adapter prefers as the data does, and the mean reward margin."""
    pairs = max(float(sums[0]), 1.0)
    return {"reward_accuracy": float(sums[1]) / pairs, "reward_margin": float(sums[2]) / pairs}
