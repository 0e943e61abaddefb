"""Where metrics go: always metrics.jsonl in the run directory, plus wandb and/or tensorboard.

Only the main process creates trackers. wandb runs offline unless an API key is set (these
data centres often have no route out; `wandb sync RUN/wandb/offline-run-*` uploads later) and
honours a self-hosted server URL. Online, the server must be one of the country profile's
allowed storage locations (checked before training starts): wandb's own cloud is never used
by default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from countrytune.errors import UserError
from countrytune.artifacts.recipe import TrackingSpec


WANDB_CLOUD = "https://api.wandb.ai"


def wandb_destination(spec: TrackingSpec) -> str | None:
    """The server wandb would send this run's config and metrics to; None when it stays offline
    (files in the run folder only)."""
    if "wandb" not in spec.trackers:
        return None
    mode = spec.wandb.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode == "offline":
        return None
    return spec.wandb.base_url or os.environ.get("WANDB_BASE_URL") or WANDB_CLOUD


def egress(spec: TrackingSpec) -> list[str]:
    """What a training run sends off the machine, in words (run.json, manifest, model card)."""
    dest = wandb_destination(spec)
    return [f"wandb: the resolved recipe and training metrics (loss, learning rate, tokens/s, "
            f"per-language eval loss) to {dest}"] if dest else []


class Trackers:
    def __init__(self, spec: TrackingSpec, run_dir: Path, run_name: str, config: dict,
                 resume_id: str | None = None) -> None:
        self.metrics_file = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.wandb_run = None
        self.tensorboard = None
        self.wandb_id = None
        if "wandb" in spec.trackers:
            try:
                import wandb
            except ImportError:
                raise UserError("tracking.trackers has wandb but it is not installed: "
                                "pip install 'countrytune[train]'") from None
            w = spec.wandb
            if w.base_url:
                os.environ["WANDB_BASE_URL"] = w.base_url
            mode = "online" if wandb_destination(spec) else "offline"
            # wandb sends its own telemetry and error reports to its vendor's servers, and in
            # offline mode too unless the process itself is offline (tests/test_zero_egress.py
            # caught a POST to api.forge.coreweave.com): both off, for the whole process.
            os.environ["WANDB_ERROR_REPORTING"] = "false"
            if mode == "offline":
                os.environ["WANDB_MODE"] = "offline"
            self.wandb_run = wandb.init(
                project=w.project, entity=w.entity, name=run_name, config=config, mode=mode,
                dir=str(run_dir), id=resume_id, resume="allow" if resume_id else None)
            self.wandb_id = self.wandb_run.id
        if "tensorboard" in spec.trackers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("tracking.trackers has tensorboard but it is not installed: "
                                "pip install tensorboard") from None
            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.metrics_file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self.metrics_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
