"""Render (and optionally submit) an sbatch script that trains one recipe on N nodes.

One Slurm task per node; each task runs `accelerate launch`, which starts one process
per GPU (or `procs_per_node` CPU processes) and meets the other nodes at a static
rendezvous on the first node of the allocation. Preemption and time limits requeue the
job; the trainer resumes from the newest complete checkpoint in the run folder.
"""

from __future__ import annotations

import shlex
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from countrytune.errors import UserError
from launch.common import (
    REPO_ROOT,
    TRAIN_MODULE,
    RecipeFile,
    accelerate_config,
    launch_command,
    shell_join,
    train_args,
)

# Seconds before the time limit at which Slurm sends USR1 to the batch shell: the trainer
# then finishes its optimiser step and writes a checkpoint (LoRA state: seconds; a ZeRO-3
# full-parameter state of a large model may need more: raise it with --signal-lead).
SIGNAL_LEAD_S = 120


class _Template(string.Template):
    delimiter = "@"  # bash owns `$`; `@{name}` marks what Python fills in


SCRIPT = _Template("""\
#!/bin/bash
# countrytune: train @{recipe}
# on @{nodes} node(s) x @{per_node} @{unit} = @{nprocs} process(es); run folder @{output}
# Submit with: mkdir -p @{logdir} && sbatch THIS_FILE   (`countrytune launch slurm --submit` does both)
#SBATCH --job-name=@{job_name}
#SBATCH --nodes=@{nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=@{cpus}
@{resource_lines}#SBATCH --output=@{logdir}/slurm-%j.out
#SBATCH --error=@{logdir}/slurm-%j.err
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@@@{lead}
@{site_lines}
set -euo pipefail
cd @{workdir}
RUN_DIR=@{output}
echo "[$(date -Is)] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST"
if [ -e "$RUN_DIR/DONE" ]; then echo "$RUN_DIR/DONE exists: nothing to do"; exit 0; fi

# On the USR1 Slurm sends @{lead} s before the time limit (or a TERM on preemption), ask the
# trainer to finish its optimiser step, write a complete checkpoint and stop (it watches
# $RUN_DIR/STOP); it then writes $RUN_DIR/PREEMPTED and this script requeues the job, whose
# rerun resumes from that checkpoint. Nothing trained since the last step is lost.
stop_request() {
    echo "[$(date -Is)] $1: asking the trainer to checkpoint and stop; job $SLURM_JOB_ID requeues after"
    touch "$RUN_DIR/STOP"
}
trap 'stop_request USR1' USR1
trap 'stop_request TERM' TERM

# Static rendezvous on the first node; the port follows the job id so that two jobs
# sharing a node do not collide.
export MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PROCESS_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))
export OMP_NUM_THREADS=@{threads}
@{env_lines}
# One task per node; SLURM_NODEID is this node's machine rank.
train_node() {
    exec @{command}
}
export -f train_node

# srun in the background so the USR1 trap runs at once (bash defers traps while a
# foreground command runs); `wait` returns early on a signal, so wait again until srun is gone.
srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" bash -c train_node &
SRUN_PID=$!
while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID" || true; done
RC=0
wait "$SRUN_PID" || RC=$?
if [ -e "$RUN_DIR/PREEMPTED" ] && [ ! -e "$RUN_DIR/DONE" ]; then
    echo "[$(date -Is)] $(cat "$RUN_DIR/PREEMPTED"); requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$RC"
""")

GPU_ENV = """\
# Multi-node NCCL: fail fast on a dead peer instead of hanging until the time limit (the
# trainer sets a 2-hour collective timeout, room for a checkpoint written while others wait).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_ASYNC_ERROR_HANDLING=1  # the name before torch 2.2
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}"""


@dataclass
class SlurmJob:
    """Everything the sbatch script depends on; `render()` turns it into text."""

    recipe: RecipeFile
    nodes: int = 1
    gpus_per_node: int = 0
    procs_per_node: int = 1  # CPU only: processes per node when gpus_per_node is 0
    output: Path | None = None
    sets: list[str] = field(default_factory=list)
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    python: str = sys.executable
    workdir: Path = REPO_ROOT
    accelerate_config: str | None = None
    nccl_ifname: str | None = None
    module: str = TRAIN_MODULE
    signal_lead_s: int = SIGNAL_LEAD_S

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise UserError("--nodes must be at least 1")
        if self.gpus_per_node < 0 or self.procs_per_node < 1:
            raise UserError("--gpus-per-node must be >= 0 and --procs-per-node >= 1")
        self.workdir = Path(self.workdir).resolve()
        out = Path(self.output) if self.output else Path("runs") / self.recipe.run_name
        self.output = out if out.is_absolute() else (self.workdir / out)

    @property
    def cpu(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def per_node(self) -> int:
        return self.procs_per_node if self.cpu else self.gpus_per_node

    @property
    def nprocs(self) -> int:
        return self.nodes * self.per_node

    @property
    def logdir(self) -> Path:
        return self.output / "logs"

    def command(self) -> list[str]:
        default = ("cpu-multi" if self.nprocs > 1 else "cpu") if self.cpu else (
            "multi-node" if self.nodes > 1 else "ddp")
        cmd = launch_command(
            python=self.python, config=accelerate_config(self.accelerate_config, default),
            num_processes=self.nprocs, num_machines=self.nodes, machine_rank='"$SLURM_NODEID"',
            main_ip='"$MAIN_PROCESS_IP"', main_port='"$MAIN_PROCESS_PORT"', cpu=self.cpu)
        return cmd + train_args(str(self.recipe.path), str(self.output), self.sets, self.module)

    def render(self) -> str:
        cpus = self.cpus_per_task or (self.per_node if self.cpu else 8 * self.gpus_per_node)
        resource_lines = "" if self.cpu else (
            f"#SBATCH --gpus-per-node={self.gpus_per_node}\n#SBATCH --exclusive\n#SBATCH --mem=0\n")
        site = [f"#SBATCH --{k}={v}" for k, v in (("partition", self.partition), ("time", self.time),
                                                   ("account", self.account)) if v]
        env = ["export ACCELERATE_USE_CPU=1  # with --multi_gpu: gloo processes on CPU"] if self.cpu else [GPU_ENV]
        if self.nccl_ifname:
            env.append(f"export NCCL_SOCKET_IFNAME={shlex.quote(self.nccl_ifname)}"
                       f" GLOO_SOCKET_IFNAME={shlex.quote(self.nccl_ifname)}")
        else:
            env.append("# Pick the inter-node interface if NCCL/gloo guess wrong (--nccl-ifname):\n"
                       "# export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0")
        return SCRIPT.substitute(
            recipe=self.recipe.path, nodes=self.nodes, per_node=self.per_node,
            unit="CPU process(es)" if self.cpu else "GPU(s)", nprocs=self.nprocs,
            output=shlex.quote(str(self.output)), logdir=shlex.quote(str(self.logdir)),
            job_name=f"ct-{self.recipe.run_name}", cpus=cpus, resource_lines=resource_lines,
            lead=self.signal_lead_s, site_lines="\n".join(site), workdir=shlex.quote(str(self.workdir)),
            threads=max(1, cpus // self.per_node),
            env_lines="\n".join(env), command=shell_join(self.command(), wrap=" " * 8))


def submit(job: SlurmJob, script: str, sbatch: str = "sbatch") -> str:
    """Write the script into the run's log folder, sbatch it, return the job id."""
    exe = shutil.which(sbatch)
    if exe is None:
        raise UserError(f"{sbatch} not found on PATH: submit from a Slurm login node, or drop "
                        f"--submit and copy the printed script there")
    job.logdir.mkdir(parents=True, exist_ok=True)  # Slurm does not create the log folder
    path = job.logdir / "job.sbatch"
    path.write_text(script, encoding="utf-8")
    proc = subprocess.run([exe, "--parsable", str(path)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"sbatch failed (exit {proc.returncode}) for {path}:\n{proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"
