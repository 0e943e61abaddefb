"""`countrytune launch {local,slurm,k8s}`: one recipe, from a laptop to a cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from countrytune.errors import UserError

EXAMPLE = """examples:
  countrytune launch local recipes/id/tiny-cpu.yaml --nproc 2
  countrytune launch slurm recipes/id/sft-lora.yaml --nodes 4 --gpus-per-node 8 --partition gpu \\
      --time 24:00:00 --accelerate-config zero2 --submit
  countrytune launch k8s recipes/id/sft-lora.yaml --nodes 2 --gpus-per-node 8 \\
      --image registry.example/countrytune:0.1 --pvc train-data | kubectl apply -f -
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="training recipe YAML (e.g. recipes/id/tiny-cpu.yaml)")
    p.add_argument("--set", action="append", dest="sets", default=[], metavar="KEY=VALUE",
                   help="recipe override passed to the trainer; repeatable")
    p.add_argument("--output", help="run folder (default runs/<country>-<name>)")
    p.add_argument("--accelerate-config", "--deepspeed-config", dest="accelerate_config", metavar="NAME|PATH",
                   help="accelerate config: a name under launch/accelerate/ (cpu, cpu-multi, ddp, multi-node, "
                        "zero2, zero2-offload, zero3, zero3-offload) or a YAML path")
    p.add_argument("--module", default="pipeline.train", help=argparse.SUPPRESS)  # tests swap in a stub


def add_parser(sub: argparse._SubParsersAction) -> None:
    from launch.slurm import SIGNAL_LEAD_S

    p = sub.add_parser(
        "launch", help="run a training recipe here, on Slurm or on Kubernetes",
        description="Render (and run or submit) the same `accelerate launch -m pipeline.train RECIPE` "
                    "for this machine, a Slurm cluster or Kubeflow. Rerunning resumes from the last "
                    "complete checkpoint in the run folder.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)

    loc = targets.add_parser("local", help="accelerate launch on this machine",
                             description="Run the recipe here with N processes (CPU when no GPU).")
    _common(loc)
    loc.add_argument("--nproc", type=int, default=1, help="processes (GPUs, or CPU processes) (default 1)")
    loc.add_argument("--cpu", action="store_true", help="use the CPU even when GPUs are visible")
    loc.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    loc.set_defaults(run=run_local)

    sl = targets.add_parser("slurm", help="render or submit an sbatch script",
                            description="Print an sbatch script (default), write it, or submit it.")
    _common(sl)
    sl.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    sl.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node; 0 for CPU (default 8)")
    sl.add_argument("--procs-per-node", type=int, default=1, help="CPU processes per node when --gpus-per-node 0")
    sl.add_argument("--cpus-per-task", type=int, help="CPU cores per node (default 8 per GPU, 1 per CPU process)")
    sl.add_argument("--partition")
    sl.add_argument("--time", help="time limit, e.g. 24:00:00 (the trainer checkpoints and the job "
                                   "requeues itself --signal-lead seconds before)")
    sl.add_argument("--signal-lead", type=int, default=SIGNAL_LEAD_S, metavar="SECONDS",
                    help=f"seconds before the time limit to checkpoint and requeue (default {SIGNAL_LEAD_S}); "
                         "enough for one optimiser step and a checkpoint")
    sl.add_argument("--account")
    sl.add_argument("--nccl-ifname", help="NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME for the inter-node network")
    sl.add_argument("--python", default=sys.executable, help="interpreter of the venv to run (default: this one)")
    sl.add_argument("--workdir", type=Path, help="folder the job cds to (default: this checkout)")
    mode = sl.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the script (the default)")
    mode.add_argument("--submit", action="store_true", help="sbatch it and print the job id")
    sl.add_argument("--write", type=Path, metavar="PATH", help="also write the script to PATH")
    sl.set_defaults(run=run_slurm)

    k8 = targets.add_parser("k8s", help="render a Kubeflow PyTorchJob or TrainJob",
                            description="Print a ConfigMap (the recipe) and a Kubeflow job for kubectl apply -f -.")
    _common(k8)
    k8.add_argument("--nodes", type=int, default=1, help="pods (nodes) (default 1)")
    k8.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per pod; 0 for CPU (default 8)")
    k8.add_argument("--procs-per-node", type=int, default=1, help="CPU processes per pod when --gpus-per-node 0")
    k8.add_argument("--image", required=True, help="image holding this repo (at --workdir) and its venv")
    k8.add_argument("--namespace", default="default")
    k8.add_argument("--pvc", help="PersistentVolumeClaim shared by all pods: data, checkpoints, run folder")
    k8.add_argument("--mount", default="/data", help="where the PVC is mounted (default /data)")
    k8.add_argument("--workdir", default="/workspace/countrytune", help="the repo inside the image")
    k8.add_argument("--name", help="job name (default ct-<country>-<name>)")
    k8.add_argument("--format", choices=["pytorchjob", "trainjob"], default="pytorchjob",
                    help="Kubeflow training-operator v1 PyTorchJob (default) or Trainer v2 TrainJob")
    k8.add_argument("--write", type=Path, metavar="PATH", help="also write the manifest to PATH")
    k8.set_defaults(run=run_k8s)


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)


def run_local(args: argparse.Namespace) -> int:
    from launch.common import resolve_recipe_file
    from launch.local import gpu_count, local_command, run_local

    recipe = resolve_recipe_file(args.recipe, args.sets)
    cpu = args.cpu or gpu_count() == 0
    env, cmd = local_command(recipe, args.nproc, output=args.output, sets=args.sets,
                             config=args.accelerate_config, cpu=cpu, module=args.module)
    return run_local(env, cmd, dry_run=args.dry_run)


def run_slurm(args: argparse.Namespace) -> int:
    from launch.common import REPO_ROOT, resolve_recipe_file
    from launch.slurm import SlurmJob, submit

    job = SlurmJob(
        recipe=resolve_recipe_file(args.recipe, args.sets), nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        procs_per_node=args.procs_per_node, output=Path(args.output) if args.output else None,
        sets=args.sets, partition=args.partition, time=args.time, account=args.account,
        cpus_per_task=args.cpus_per_task, python=args.python, workdir=args.workdir or REPO_ROOT,
        accelerate_config=args.accelerate_config, nccl_ifname=args.nccl_ifname, module=args.module,
        signal_lead_s=args.signal_lead)
    script = job.render()
    _write(args.write, script)
    if not args.submit:
        print(script, end="")
        return 0
    job_id = submit(job, script)
    print(f"submitted job {job_id}; logs in {job.logdir}; run folder {job.output}", file=sys.stderr)
    print(job_id)
    return 0


def run_k8s(args: argparse.Namespace) -> int:
    from launch.common import resolve_recipe_file
    from launch.k8s import K8sJob, render

    if args.output and not args.output.startswith("/"):
        raise UserError("--output must be an absolute path inside the pod (e.g. /data/runs/id-sft)")
    job = K8sJob(recipe=resolve_recipe_file(args.recipe, args.sets), image=args.image, nodes=args.nodes,
                 gpus_per_node=args.gpus_per_node, procs_per_node=args.procs_per_node,
                 namespace=args.namespace, pvc=args.pvc, mount=args.mount, workdir=args.workdir,
                 output=args.output, sets=args.sets, accelerate_config=args.accelerate_config,
                 name=args.name, module=args.module)
    text = render(job, args.format)
    _write(args.write, text)
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m launch.cli ...`: the same as `countrytune launch ...`."""
    parser = argparse.ArgumentParser(prog="countrytune")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["launch", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.run(args) or 0
    except UserError as e:
        print(f"countrytune launch {args.target}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
