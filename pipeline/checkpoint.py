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
  COMPLETE            written last, after every process finished writing
A directory without COMPLETE is never resumed from: a job killed while saving leaves one.
A LoRA checkpoint saves only trainable weights, not the frozen base (16 GB for an 8B model).
"""

from __future__ import annotations

import json
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
        shutil.rmtree(old, ignore_errors=True)


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
    """Write a checkpoint; every process must call this. COMPLETE goes last, after a barrier."""
    if accelerator.is_main_process:
        if ckpt.exists():  # an incomplete one from a killed save
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True)
    accelerator.wait_for_everyone()
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
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (ckpt / COMPLETE).write_text("")


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
