"""The run folder belongs to one trainer at a time, and to one recipe.

- A lock (`.lock`, flock, released by the OS when the process dies) refuses a second trainer
  started into the same folder, instead of two runs racing over checkpoints.
- `--no-resume` removes what an earlier run wrote there (only the trainer's own files), so an
  old run's checkpoints can never be resumed later by mistake.
- Resuming compares the recipe the checkpoint was made with against the current one and
  refuses a difference, naming it (a changed `lora.r` would otherwise die in a size-mismatch
  traceback; a changed tokenizer would silently reuse the old one). Cadence settings (logging,
  eval, save, trackers, held-out evaluation) may change between attempts.
- Temporary leftovers of writers killed mid-write are removed, and so are checkpoints without
  COMPLETE (a save killed midway): never resumed from, they could hold a ZeRO-3 checkpoint's
  size of disk each.
- Worker processes die with their launcher (Linux): after `kill -9` of `accelerate launch`
  they would otherwise finish the run on their own.
"""

from __future__ import annotations

import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from countrytune.atomic import clean_stale, remove_named, atomic_write
from countrytune.artifacts.run_record import RUN_RECORD
from countrytune.errors import UserError
from countrytune.folder_lock import FolderLock, die_with_parent

STOP_REQUEST = "STOP"
"""Created by a scheduler (the sbatch script's USR1/TERM trap) to ask the trainer to finish its
step, write a complete checkpoint and stop."""
PREEMPTED = "PREEMPTED"
"""Written by the trainer when it stopped on such a request: the job should requeue."""
REQUEUE_EXIT = 75
"""Exit code of a standalone `countrytune train` that stopped to be requeued (EX_TEMPFAIL)."""
# Everything the trainer writes into a run folder (and nothing else is ever removed).
TRAINER_OUTPUTS = ("checkpoints", "adapter", "tokenizer", "base_model", "heldout_eval", "wandb",
                   "tensorboard", "metrics.jsonl", "eval.jsonl", RUN_RECORD, "recipe.yaml", "DONE",
                   "library.log", "logs")
# Recipe fields that may differ between attempts of one run without changing what it computes.
CADENCE = {("training", "log_every"), ("training", "eval_every"), ("training", "save_every"),
           ("training", "keep_checkpoints"), ("tracking",), ("evaluation",)}


def RunLock(run_dir: Path) -> FolderLock:  # noqa: N802 (kept: the trainer's name for it)
    """The trainer's exclusive lock on its run folder."""
    return FolderLock(run_dir, "trainer", "wait for it to end, or train into another --output")


@contextmanager
def hold(run_dir: Path):
    """The lock for the job's global rank 0 (the folder is shared by every node); a no-op on
    the other ranks."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    lock = RunLock(run_dir)
    try:
        yield
    finally:
        lock.release()


def _differences(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[str]:
    if any(path[:len(c)] == c for c in CADENCE):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), (*path, key))
        return out
    return [] if old == new else [f"{'.'.join(path)}: {old!r} -> {new!r}"]


def recipe_differences(old_yaml: Path, new: dict) -> list[str]:
    """What differs between a saved resolved recipe and the current one, cadence aside. The
    saved one is read through the current schema first, so a field added since (with its
    default) is no difference."""
    from pydantic import ValidationError

    from countrytune.artifacts.recipe import TrainRecipe

    old = yaml.safe_load(old_yaml.read_text(encoding="utf-8")) or {}
    try:
        old = TrainRecipe.model_validate(old).model_dump(mode="json")
    except ValidationError:
        pass  # a field since removed or renamed: compare as written, the difference shows it
    return _differences(old, new)


def remove_trainer_outputs(run_dir: Path) -> list[str]:
    return remove_named(run_dir, TRAINER_OUTPUTS)


def claim(run_dir: Path, recipe: dict, *, resume: bool, latest_checkpoint: Path | None) -> list[str]:
    """Make run_dir this run's (main process, under the lock); returns what was done, for the log.

    Raises UserError when a checkpoint of a different recipe would be resumed."""
    notes = []
    for name in (STOP_REQUEST, PREEMPTED):  # a request already served must not stop this attempt
        (run_dir / name).unlink(missing_ok=True)
    from pipeline.training.checkpoint import incomplete

    stale = clean_stale(run_dir) + clean_stale(run_dir / "checkpoints")
    for partial in incomplete(run_dir):
        shutil.rmtree(partial, ignore_errors=True)
        stale.append(f"checkpoints/{partial.name} (no COMPLETE)")
    if stale:
        notes.append(f"removed leftovers of a killed writer: {', '.join(stale)}")
    if not resume:
        removed = remove_trainer_outputs(run_dir)
        if removed:
            notes.append(f"--no-resume: removed the earlier run's {', '.join(removed)}")
        return notes
    made_with = latest_checkpoint / "recipe.yaml" if latest_checkpoint else run_dir / "recipe.yaml"
    if not made_with.is_file():
        return notes
    diffs = recipe_differences(made_with, recipe)
    if not diffs:
        return notes
    if latest_checkpoint is not None:
        shown = "; ".join(diffs[:8]) + (f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else "")
        raise UserError(f"{run_dir} holds checkpoints of a run with a different recipe ({shown}). "
                        f"Resume with the same recipe, or start fresh: rerun with --no-resume (this "
                        f"deletes that run's checkpoints and adapter) or train into another --output")
    # No checkpoint to lose: what an earlier attempt built (tokenizer, tiny base) may not fit.
    removed = remove_trainer_outputs(run_dir)
    notes.append(f"the recipe changed since the last attempt ({'; '.join(diffs[:3])}); removed its "
                 f"{', '.join(removed)}")
    return notes


def die_with_launcher() -> None:
    """Ask Linux to send this process SIGTERM when its parent (the launcher) dies."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        die_with_parent(signal.SIGTERM)


def truncate_logs(run_dir: Path, step: int) -> None:
    """Keep the lines of metrics.jsonl and eval.jsonl up to `step` (the checkpoint resumed from):
    the steps after it are trained again and logged again. A line cut short by a kill goes too."""
    import json

    for name in ("metrics.jsonl", "eval.jsonl"):
        path = run_dir / name
        if not path.is_file():
            continue
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write(path, "".join(x + "\n" for x in kept))


class StopRequests:
    """SIGTERM, SIGUSR1 or a STOP file in the run folder ask the trainer to stop after the current
    optimiser step with a complete checkpoint. The signal only sets a flag (a handler must not
    save from inside a step); every process then agrees through one all-reduce per step, since
    a signal or the file may reach the processes at different steps."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.stop_file = run_dir / STOP_REQUEST
        self.is_main = is_main
        self.received: str | None = None
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def agreed(self, accelerator) -> str | None:
        """Why to stop now (the same answer on every process), or None."""
        import torch

        local = self.received or (STOP_REQUEST if self.is_main and self.stop_file.exists() else None)
        flag = torch.tensor([1 if local else 0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        if int(flag.item()) == 0:
            return None
        return local or "a request on another process"

    def close(self, run_dir: Path, step: int, reason: str) -> None:
        """Main process, after the checkpoint: mark the run for requeueing."""
        (run_dir / PREEMPTED).write_text(f"stopped after step {step} on {reason}\n", encoding="utf-8")
        self.stop_file.unlink(missing_ok=True)


@contextmanager
def signals_restored():
    """Give SIGTERM and SIGUSR1 back their handlers when training ends (in-process callers,
    tests, notebooks keep their own behaviour)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def under_launcher() -> bool:
    """Started by accelerate launch / torchrun (whose exit code is 1 for any worker's non-zero)."""
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
