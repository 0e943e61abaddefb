"""Render a Kubeflow PyTorchJob (training-operator v1) or TrainJob (Trainer v2) for a recipe.

Both run `accelerate launch` once per pod (node), the same command as the Slurm script,
with the rendezvous taken from what the operator injects:
- PyTorchJob sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE (= pods, since nprocPerNode is
  left unset) and RANK (= pod index, Master 0) in every pod;
- TrainJob's torch-distributed runtime sets PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR,
  PET_MASTER_PORT (torchrun's own environment names).
accelerate rather than bare torchrun: the same accelerate config (DDP or DeepSpeed ZeRO)
then means the same thing on a laptop, on Slurm and here; accelerate itself runs torchrun
underneath with a static rendezvous.

The recipe travels in a ConfigMap rendered into the same multi-document YAML; data,
checkpoints and the run folder live on a shared PersistentVolumeClaim, so a restarted pod
reruns the same command and the trainer resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from countrytune.errors import UserError
from launch.common import (
    ACCELERATE_DIR,
    TRAIN_MODULE,
    RecipeFile,
    accelerate_config,
    dns_name,
    launch_command,
    shell_join,
    train_args,
)

RECIPE_DIR = "/etc/countrytune"
# Pods restart on failure up to this many times before the job is marked failed; each
# restart resumes from the last checkpoint, so a few flaky nodes do not lose the run.
BACKOFF_LIMIT = 10
# torch-distributed is the ClusterTrainingRuntime shipped with Kubeflow Trainer v2; its
# single replicated job and container are both called "node".
TRAINJOB_RUNTIME = "torch-distributed"
TRAINJOB_NODE = "node"


@dataclass
class K8sJob:
    recipe: RecipeFile
    image: str
    nodes: int = 1
    gpus_per_node: int = 1
    procs_per_node: int = 1  # CPU only (gpus_per_node == 0)
    namespace: str = "default"
    pvc: str | None = None
    mount: str = "/data"
    workdir: str = "/workspace/countrytune"
    output: str | None = None
    sets: list[str] = field(default_factory=list)
    accelerate_config: str | None = None
    python: str = "python"
    name: str | None = None
    module: str = TRAIN_MODULE

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 0 or self.procs_per_node < 1:
            raise UserError("--nodes must be >= 1, --gpus-per-node >= 0, --procs-per-node >= 1")
        if not self.image:
            raise UserError("--image is required: the container image holding this repo and its venv")
        self.name = dns_name(self.name or f"ct-{self.recipe.run_name}")
        if self.output is None:
            base = self.mount if self.pvc else self.workdir
            self.output = f"{base.rstrip('/')}/runs/{self.recipe.run_name}"

    @property
    def cpu(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def nprocs(self) -> int:
        return self.nodes * (self.procs_per_node if self.cpu else self.gpus_per_node)

    def script(self, rank: str, nnodes_env: str, addr: str, port: str) -> str:
        """The pod's bash command; rank/addr/port are environment variable names."""
        default = ("cpu-multi" if self.nprocs > 1 else "cpu") if self.cpu else (
            "multi-node" if self.nodes > 1 else "ddp")
        config = accelerate_config(self.accelerate_config, default)
        # Inside the image the repo sits at workdir: name the config relative to it.
        # A config shipped in launch/accelerate/ is named relative to the repo in the image;
        # any other path is taken as the image's own.
        config_in_image = (f"launch/accelerate/{config.name}" if config.parent == ACCELERATE_DIR
                           else str(self.accelerate_config))
        cmd = launch_command(python=self.python, config=config, num_processes=self.nprocs,
                             num_machines=self.nodes, machine_rank=f'"${rank}"',
                             main_ip=f'"${addr}"', main_port=f'"${port}"', cpu=self.cpu)
        cmd[cmd.index(str(config))] = config_in_image
        cmd += train_args(f"{RECIPE_DIR}/recipe.yaml", self.output, self.sets, self.module)
        # A warning, not a stop: operators differ in what they count (pods or processes).
        check = (f'[ "${{{nnodes_env}:-{self.nodes}}}" = {self.nodes} ] || '
                 f'echo "warning: rendered for {self.nodes} nodes, {nnodes_env}=${nnodes_env}" >&2')
        return f"set -eu\ncd {shlex.quote(self.workdir)}\n{check}\nexec {shell_join(cmd, wrap='    ')}\n"

    def env(self) -> list[dict[str, str]]:
        env = [{"name": "OMP_NUM_THREADS", "value": "4"}]
        if self.cpu:
            env.append({"name": "ACCELERATE_USE_CPU", "value": "1"})
        else:
            env += [{"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
                    {"name": "NCCL_DEBUG", "value": "WARN"}]
        return env

    def resources(self) -> dict[str, Any]:
        return {} if self.cpu else {"limits": {"nvidia.com/gpu": self.gpus_per_node}}

    def volumes(self) -> tuple[list[dict], list[dict]]:
        """(volumes, volumeMounts): the recipe ConfigMap, /dev/shm, and the shared PVC."""
        volumes = [{"name": "recipe", "configMap": {"name": f"{self.name}-recipe"}},
                   # The container runtime's default /dev/shm is 64 MiB: too small for
                   # NCCL's shared-memory transport and DataLoader workers.
                   {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
        mounts = [{"name": "recipe", "mountPath": RECIPE_DIR, "readOnly": True},
                  {"name": "dshm", "mountPath": "/dev/shm"}]
        if self.pvc:
            volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": self.pvc}})
            mounts.append({"name": "data", "mountPath": self.mount})
        return volumes, mounts

    def configmap(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": f"{self.name}-recipe", "namespace": self.namespace,
                             "labels": self.labels()},
                "data": {"recipe.yaml": self.recipe.text}}

    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "countrytune", "app.kubernetes.io/instance": self.name}

    def pytorchjob(self) -> dict[str, Any]:
        volumes, mounts = self.volumes()
        container = {"name": "pytorch",  # the operator finds the training container by this name
                     "image": self.image, "imagePullPolicy": "IfNotPresent",
                     "command": ["bash", "-c", self.script("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")],
                     "env": self.env(), "resources": self.resources(), "volumeMounts": mounts}

        def replica(n: int) -> dict[str, Any]:
            return {"replicas": n, "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": self.labels()},
                                 "spec": {"containers": [container], "volumes": volumes}}}

        specs = {"Master": replica(1)}
        if self.nodes > 1:
            specs["Worker"] = replica(self.nodes - 1)
        return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels()},
                "spec": {"runPolicy": {"backoffLimit": BACKOFF_LIMIT, "cleanPodPolicy": "None"},
                         "pytorchReplicaSpecs": specs}}

    def trainjob(self) -> dict[str, Any]:
        volumes, mounts = self.volumes()
        trainer = {"image": self.image, "numNodes": self.nodes,
                   "command": ["bash", "-c",
                               self.script("PET_NODE_RANK", "PET_NNODES", "PET_MASTER_ADDR", "PET_MASTER_PORT")],
                   "env": self.env()}
        if not self.cpu:
            trainer["numProcPerNode"] = self.gpus_per_node
            trainer["resourcesPerNode"] = self.resources()
        return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels()},
                "spec": {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                        "name": TRAINJOB_RUNTIME},
                         "trainer": trainer,
                         "podSpecOverrides": [{"targetJobs": [{"name": TRAINJOB_NODE}], "volumes": volumes,
                                               "containers": [{"name": TRAINJOB_NODE, "volumeMounts": mounts}]}]}}

    def documents(self, fmt: str = "pytorchjob") -> list[dict[str, Any]]:
        job = self.trainjob() if fmt == "trainjob" else self.pytorchjob()
        return [self.configmap(), job]


class _Dumper(yaml.SafeDumper):
    """Readable manifests: no &anchors for repeated pod specs, scripts as `|` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def render(job: K8sJob, fmt: str = "pytorchjob") -> str:
    """The ConfigMap and the job as one multi-document YAML for `kubectl apply -f -`."""
    return yaml.dump_all(job.documents(fmt), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         width=100, allow_unicode=True)
