"""Run a recipe through `accelerate launch` on this machine: the laptop end of the same path."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from countrytune.errors import UserError
from launch.common import (
    TRAIN_MODULE,
    RecipeFile,
    accelerate_config,
    launch_command,
    train_args,
)


def gpu_count() -> int:
    """GPUs torch can see here (0 without CUDA); torch is imported only when launching."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_command(recipe: RecipeFile, nproc: int, *, output: str | None = None, sets: list[str] | None = None,
                  config: str | None = None, cpu: bool = True, python: str = sys.executable,
                  module: str = TRAIN_MODULE) -> tuple[dict[str, str], list[str]]:
    """(extra environment, argv) for `accelerate launch` with nproc processes here."""
    if nproc < 1:
        raise UserError("--nproc must be at least 1")
    default = ("cpu-multi" if nproc > 1 else "cpu") if cpu else "ddp"
    cmd = launch_command(python=python, config=accelerate_config(config, default), num_processes=nproc, cpu=cpu)
    out = output or str(Path("runs") / recipe.run_name)
    env = {"ACCELERATE_USE_CPU": "1"} if cpu else {}
    return env, cmd + train_args(str(recipe.path), out, list(sets or []), module)


def run_local(env: dict[str, str], cmd: list[str], dry_run: bool = False) -> int:
    """Print the command, then run it with this terminal's stdio; return its exit code."""
    line = " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in cmd])
    print(line, flush=True)
    if dry_run:
        return 0
    try:
        return subprocess.run(cmd, check=False, env={**os.environ, **env}).returncode
    except FileNotFoundError as e:
        raise UserError(f"cannot run {cmd[0]}: {e}") from None
