"""Checkpoints that resume exactly, from any ZeRO stage and either method.

A checkpoint directory `checkpoints/step-0000120/` holds:
  adapter/            method lora: the adapter in peft format, gathered under ZeRO-3
  model.safetensors   method full without DeepSpeed: every weight (under DeepSpeed its
                      partitioned checkpoint holds them)
  optimizer.pt        optimiser state (plain/DDP), or deepspeed/ (ZeRO-partitioned state)
  scheduler.pt        learning-rate scheduler state
  rng-rank<R>.pt      every RNG state of each process (python, numpy, torch, CUDA)
  trainer_state.json  step, tokens seen; the data position is the step (see RowSchedule)
  recipe.yaml         the resolved recipe
  COMPLETE            written last, after every process wrote and fsynced its files
A directory without COMPLETE is never resumed from: a job killed while saving leaves one (the
next attempt removes it, see run_folder.claim). A write that fails (a full disk) removes its
partial directory and says so; the newest complete checkpoint is never touched by a save.
A LoRA checkpoint saves only trainable weights, not the frozen base (16 GB for an 8B model).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

COMPLETE = "COMPLETE"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:07d}"


def latest_complete(run_dir: Path) -> Path | None:
    found = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / COMPLETE).exists())
    return found[-1] if found else None


def prune(run_dir: Path, keep: int) -> None:
    complete = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / COMPLETE).exists())
    for old in complete[:-keep]:
        # COMPLETE goes first: rmtree removes files in directory order, and a kill midway used
        # to leave a checkpoint marked complete with its weights or optimiser state gone.
        (old / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)


def incomplete(run_dir: Path) -> list[Path]:
    """Checkpoint directories without COMPLETE: saves that were killed or failed."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*")
                  if p.is_dir() and not p.is_symlink() and not (p / COMPLETE).exists())


def rng_state() -> dict:
    # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: its key
    # array travels as a tensor instead, so every checkpoint file loads without unpickling code.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt: Path, *, accelerator, weights, optimizer, scheduler, engine,
                    trainer_state: dict, recipe_yaml: str) -> None:
    """Write a checkpoint; every process must call this. COMPLETE goes last, after a barrier.

    A write that fails for lack of space raises UserError naming the checkpoint still usable
    (torch.save reports a full disk as "unexpected pos 576 vs 534")."""
    if accelerator.is_main_process:
        if ckpt.exists():  # an incomplete one from a killed save
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        _write(ckpt, accelerator, weights, optimizer, scheduler, engine, trainer_state, recipe_yaml)
    except Exception as e:  # noqa: BLE001 - re-raised, as a UserError only when the disk is full
        free = shutil.disk_usage(ckpt.parent).free
        if not _storage_full(e, free):
            raise
        if accelerator.is_main_process:
            shutil.rmtree(ckpt, ignore_errors=True)  # never resumed from; frees what it took
        from countrytune.errors import UserError

        previous = latest_complete(ckpt.parent.parent)
        raise UserError(
            f"checkpoint {ckpt} could not be written: no space left on the filesystem holding it "
            f"({free:,} bytes free; {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"The partial checkpoint was removed and nothing was marked complete; "
            + (f"the newest complete checkpoint, {previous}, is untouched: free space and rerun the "
               f"same command to resume from it" if previous else
               "no earlier checkpoint exists: free space and rerun the same command")) from e


# A failed write with less than this left on the filesystem is taken for a full disk: torch.save
# does not say ENOSPC, and a checkpoint of the smallest real model is larger than this.
FULL_BELOW_BYTES = 64 << 20


def _storage_full(error: BaseException, free: int) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return free < FULL_BELOW_BYTES


def _write(ckpt: Path, accelerator, weights, optimizer, scheduler, engine, trainer_state: dict,
           recipe_yaml: str) -> None:
    weights.save_to_checkpoint(ckpt, accelerator.is_main_process, engine)
    if engine is not None:
        # ZeRO keeps optimiser state partitioned: each process writes its own slice. Frozen
        # base weights are left out; they come from the base model on resume.
        engine.save_checkpoint(str(ckpt / "deepspeed"), tag="state",
                               exclude_frozen_parameters=True, save_latest=False)
    elif accelerator.is_main_process:
        torch.save(optimizer.state_dict(), ckpt / "optimizer.pt")
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), ckpt / "scheduler.pt")
        (ckpt / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        (ckpt / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    torch.save(rng_state(), ckpt / f"rng-rank{accelerator.process_index}.pt")
    # On disk before COMPLETE is: a kill -9 keeps written data in the page cache, a power loss
    # or node crash does not, and would leave COMPLETE beside files that never landed.
    _sync_tree(ckpt)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (ckpt / COMPLETE).write_text("")
        _fsync(ckpt / COMPLETE)
        _fsync(ckpt)
        _fsync(ckpt.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (each process: on a shared filesystem the
    writer's own fsync is what guarantees its data reached the server)."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def load_checkpoint(ckpt: Path, *, accelerator, weights, optimizer, scheduler, engine) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the trainer state."""
    if engine is not None:
        engine.load_checkpoint(str(ckpt / "deepspeed"), tag="state", load_module_strict=False,
                               load_optimizer_states=True, load_lr_scheduler_states=False)
    else:
        weights.load_from_checkpoint(ckpt, engine)
        optimizer.load_state_dict(_load(ckpt / "optimizer.pt"))
    scheduler.load_state_dict(_load(ckpt / "scheduler.pt"))
    rng_file = ckpt / f"rng-rank{accelerator.process_index}.pt"
    if not rng_file.exists():
        raise FileNotFoundError(f"{rng_file}: checkpoint written by fewer processes; resume "
                                f"with the same number of processes for an exact continuation")
    set_rng_state(_load(rng_file))
    return json.loads((ckpt / "trainer_state.json").read_text())


def _load(path: Path):
    """Tensors, numbers, strings and containers only: a checkpoint never runs code on load."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        from countrytune.errors import UserError

        raise UserError(f"{path}: holds objects other than tensors and plain values, which "
                        f"countrytune does not unpickle ({str(e).splitlines()[0]}); it was not "
                        f"written by this trainer: delete that checkpoint or start with --no-resume") from None
