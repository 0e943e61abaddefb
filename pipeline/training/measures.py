"""What the training loop measures: held-out loss per language, the loss and throughput of
each log window, preference tuning's reward accuracy, device memory; and where it writes them."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: loop imports this module
    from countrytune.artifacts.recipe import TrainRecipe
    from pipeline.training.loop import Run


def evaluate(model, eval_sets, accelerator, units=None) -> dict[str, dict[str, float]]:
    """Loss and perplexity per language on held-out text, summed over every process; for
    preference pairs (units: pairs_in), the DPO loss per pair and the share of pairs the
    adapter prefers as the data does."""
    import torch

    from pipeline.training.loss import target_tokens

    units = units or target_tokens
    pairs = units is not target_tokens
    model.eval()
    langs = sorted(eval_sets)
    sums = torch.zeros(len(langs), 4, dtype=torch.float64, device=accelerator.device)
    loss_model = accelerator.unwrap_model(model)
    with torch.no_grad():
        for i, lang in enumerate(langs):
            for batch in eval_sets[lang]:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                sums[i, 0] += model(**batch).double()
                sums[i, 1] += units(batch)
                sums[i, 2] += (batch["labels"] != -100).sum()
            if pairs:
                sums[i, 3] = loss_model.take_window(training=False)[1]
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    out = {}
    for i, lang in enumerate(langs):
        loss_sum, count, tokens, preferred = sums[i].tolist()
        if not count:
            continue
        out[lang] = {"loss": loss_sum / count, "tokens": int(tokens)}
        if pairs:
            out[lang].update(pairs=int(count), reward_accuracy=preferred / count)
        else:
            out[lang]["perplexity"] = math.exp(min(loss_sum / count, 50))
    return out


class LossWindow:
    """Loss and throughput since the last log line, summed over every process."""

    def __init__(self, accelerator, tokens_seen: int) -> None:
        import torch

        self.accelerator = accelerator
        self.sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        self.start, self.start_tokens = time.monotonic(), tokens_seen

    def add(self, loss_sum, units: int) -> None:
        self.sums[0] += loss_sum.detach().double()
        self.sums[1] += units

    def close(self, tokens_seen: int) -> tuple[float, float]:
        """(mean loss per target token, or per pair, and tokens/s) of the window; starts the next one."""
        summed = self.accelerator.reduce(self.sums.clone(), reduction="sum")
        loss = (summed[0] / summed[1].clamp(min=1)).item()
        elapsed = time.monotonic() - self.start
        tps = (tokens_seen - self.start_tokens) / max(elapsed, 1e-9)  # the last window may be short
        self.sums.zero_()
        self.start, self.start_tokens = time.monotonic(), tokens_seen
        return loss, tps


def preference_metrics(recipe: TrainRecipe, model, accelerator) -> dict[str, float]:
    """task dpo: how often the adapter's implicit reward prefers the chosen answer, and by how
    much, over the log window (every process must call it)."""
    if recipe.task != "dpo":
        return {}
    from pipeline.training.preference_loss import window_metrics

    sums = accelerator.unwrap_model(model).take_window(training=True).to(accelerator.device)
    return {f"train/{k}": v for k, v in window_metrics(accelerator.reduce(sums, reduction="sum")).items()}


def record_eval(run: Run, run_dir: Path, trackers, step: int, results: dict) -> None:
    if run.is_main:
        trackers.log({f"eval/{lang}/loss": r["loss"] for lang, r in results.items()}, step)
        with (run_dir / "eval.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "languages": results}) + "\n")


def device_memory(accelerator) -> dict[str, float]:
    """Peak accelerator memory of this process so far, for the metrics (CUDA only)."""
    import torch

    if accelerator.device.type != "cuda":
        return {}
    return {"train/peak_mem_gib": torch.cuda.max_memory_allocated(accelerator.device) / 2**30}
