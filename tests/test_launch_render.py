"""launch/: the shipped configs load with accelerate and DeepSpeed's own classes, the sbatch
scripts pass `bash -n`, the Kubeflow manifests validate against the CRD schemas in
../shared/specs, and the local launcher builds the command ENV-NOTES says works on CPU."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from countrytune.errors import UserError
from launch.common import ACCELERATE_DIR, DEEPSPEED_DIR, REPO_ROOT, resolve_recipe_file
from launch.k8s import K8sJob, render
from launch.local import local_command, run_local
from launch.slurm import SlurmJob, submit

ROOT = Path(__file__).resolve().parents[1]
SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs"
TINY = ROOT / "recipes" / "id" / "tiny-cpu.yaml"
SFT = ROOT / "recipes" / "id" / "sft-lora.yaml"
ACCELERATE_YAMLS = sorted(ACCELERATE_DIR.glob("*.yaml"))
DEEPSPEED_JSONS = sorted(DEEPSPEED_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def tiny():
    return resolve_recipe_file(TINY)


@pytest.fixture(scope="module")
def sft():
    return resolve_recipe_file(SFT if SFT.exists() else TINY)


def accelerate_argv(cmd: list[str]) -> list[str]:
    """The arguments after `python -m accelerate.commands.launch`."""
    return cmd[cmd.index("accelerate.commands.launch") + 1:]


# ---- accelerate and DeepSpeed configs ----------------------------------------------------

def test_config_sets_are_complete():
    assert {p.stem for p in ACCELERATE_YAMLS} >= {"cpu", "cpu-multi", "ddp", "multi-node", "zero2",
                                                 "zero2-offload", "zero3", "zero3-offload"}
    assert {p.stem for p in DEEPSPEED_JSONS} >= {"zero2", "zero2-offload", "zero3", "zero3-offload"}


@pytest.mark.parametrize("path", ACCELERATE_YAMLS, ids=lambda p: p.name)
def test_accelerate_yaml_loads_with_accelerate(path):
    from accelerate.commands.config.config_args import (
        ClusterConfig,
        load_config_from_file,
    )
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert ClusterConfig.from_yaml_file(str(path)).to_dict() == config.to_dict()
    if config.distributed_type == DistributedType.DEEPSPEED:
        ds = config.deepspeed_config
        # relative to the repo root, where every launcher cds
        assert (REPO_ROOT / ds["deepspeed_config_file"]).is_file()
        assert ds["deepspeed_config_file"] == f"launch/deepspeed/{path.stem}.json"
        # accelerate refuses mixed_precision beside a deepspeed_config_file
        assert config.mixed_precision is None
        # torchrun on each node (what Slurm/k8s start), not DeepSpeed's pdsh launcher
        assert ds["deepspeed_multinode_launcher"] == "standard"
        assert ds["zero3_init_flag"] is path.stem.startswith("zero3")
    if path.stem.startswith("cpu"):
        assert config.use_cpu


@pytest.mark.parametrize("path", DEEPSPEED_JSONS, ids=lambda p: p.name)
def test_deepspeed_json_has_what_deepspeed_needs(path):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    cfg = json.loads(path.read_text())
    # accelerate fills these from the Accelerator the trainer builds
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
                "train_batch_size"):
        assert cfg[key] == "auto", key
    assert cfg["bf16"]["enabled"] == "auto"
    zero = cfg["zero_optimization"]
    stage = int(path.stem[len("zero")])
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == path.stem.endswith("-offload")
    if stage == 3 and "offload" in path.stem:
        assert zero["offload_param"]["device"] == "cpu"
    if stage == 3:  # the trainer gathers the adapter itself; not the whole 16-bit base
        assert zero["stage3_gather_16bit_weights_on_model_save"] is False
    # DeepSpeed's own (pydantic) schema of the zero section, "auto" replaced by numbers as
    # accelerate does from the model's hidden size
    filled = {k: (1_000_000 if v == "auto" else v) for k, v in zero.items()}
    parsed = DeepSpeedZeroConfig(**filled)
    assert int(parsed.stage) == stage


# ---- Slurm --------------------------------------------------------------------------------

def bash_n(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_slurm_four_nodes_eight_gpus(sft, tmp_path):
    job = SlurmJob(sft, nodes=4, gpus_per_node=8, partition="gpu", time="24:00:00", account="lab",
                   accelerate_config="zero3", output=tmp_path / "run", sets=["training.max_steps=100"])
    script = job.render()
    bash_n(script, tmp_path)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=64", "#SBATCH --partition=gpu", "#SBATCH --time=24:00:00",
                 "#SBATCH --account=lab", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                 f"#SBATCH --output={tmp_path}/run/logs/slurm-%j.out", "trap 'stop_request USR1' USR1",
                 "trap 'stop_request TERM' TERM", 'touch "$RUN_DIR/STOP"',
                 'scontrol requeue "$SLURM_JOB_ID"', "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
                 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1', "--num_processes 32",
                 "--num_machines 4", '--machine_rank "$SLURM_NODEID"', '--main_process_ip "$MAIN_PROCESS_IP"',
                 f"--config_file {ACCELERATE_DIR}/zero3.yaml", f"-m pipeline.train {sft.path}",
                 f"--output {tmp_path}/run", "--set training.max_steps=100", "NCCL_SOCKET_IFNAME"):
        assert line in script, line
    assert "ACCELERATE_USE_CPU" not in script and "--multi_gpu" not in script
    # what bash hands accelerate on the second node
    values = {'"$SLURM_NODEID"': "1", '"$MAIN_PROCESS_IP"': "node001", '"$MAIN_PROCESS_PORT"': "29500"}
    argv = [values.get(a, a) for a in accelerate_argv(job.command())]
    from accelerate.commands.launch import launch_command_parser

    args = launch_command_parser().parse_args(argv)  # accelerate knows every flag we render
    assert (args.num_processes, args.num_machines, args.machine_rank, args.module) == (32, 4, 1, True)


@pytest.mark.parametrize(("procs", "multi"), [(1, False), (2, True)])
def test_slurm_cpu_variant(tiny, tmp_path, procs, multi):
    job = SlurmJob(tiny, nodes=1, gpus_per_node=0, procs_per_node=procs, output=tmp_path / "run")
    script = job.render()
    bash_n(script, tmp_path)
    assert "--gpus" not in script and "--exclusive" not in script
    assert "export ACCELERATE_USE_CPU=1" in script
    assert f"--num_processes {procs}" in script
    # ENV-NOTES: --cpu would start one process; --multi_gpu refuses a single one
    assert ("--multi_gpu" in job.command()) is multi
    assert "--cpu " not in script
    assert f"#SBATCH --cpus-per-task={procs}" in script


def test_slurm_defaults_and_errors(tiny, tmp_path, monkeypatch):
    job = SlurmJob(tiny, gpus_per_node=0)
    assert job.output == REPO_ROOT / "runs" / "id-tiny-cpu"
    assert f"exec {sys.executable}" in job.render()  # this venv by default
    with pytest.raises(UserError, match="nodes"):
        SlurmJob(tiny, nodes=0)
    with pytest.raises(UserError, match="not found"):
        SlurmJob(tiny, accelerate_config="zero9").render()
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(UserError, match="sbatch not found"):
        submit(SlurmJob(tiny, gpus_per_node=0, output=tmp_path / "run"), "#!/bin/bash\n")


def test_recipe_errors(tmp_path):
    with pytest.raises(UserError, match="no such recipe"):
        resolve_recipe_file(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="key=value"):
        resolve_recipe_file(TINY, ["training.max_steps"])


def test_cli_prints_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "slurm", str(TINY), "--gpus-per-node", "0",
                           "--output", str(tmp_path / "run"), "--write", str(tmp_path / "job.sbatch")],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash") and proc.stdout == (tmp_path / "job.sbatch").read_text()
    bad = subprocess.run([sys.executable, "-m", "launch.cli", "slurm", str(tmp_path / "nope.yaml")],
                         cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert bad.returncode == 2 and "no such recipe" in bad.stderr


# ---- Kubernetes ---------------------------------------------------------------------------

def strict(schema):
    """Reject unknown fields, as `kubectl apply --validate=strict` does.

    The API server prunes unknown fields silently, so a misspelt key would vanish without
    an error; jsonschema accepts extra keys unless told otherwise. Objects that declare
    properties and neither additionalProperties nor x-kubernetes-preserve-unknown-fields
    get additionalProperties: false. No other preprocessing is needed: int-or-string
    fields are spelt anyOf [integer, string] in these CRDs, which jsonschema understands,
    and the x-kubernetes-* keys and int32/int64 formats are ignored by it.
    """
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(filename: str):
    import jsonschema

    path = SPECS / filename
    if not path.exists():
        pytest.skip(f"CRD spec not found at {path} (the shared/ folder beside the checkout)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 8k lines
    version = next(v for v in crd["spec"]["versions"] if v.get("served"))
    schema = strict(version["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return crd, version["name"], cls(schema)


def check_against_crd(obj: dict, filename: str) -> None:
    crd, version, validator = crd_validator(filename)
    assert obj["apiVersion"] == f"{crd['spec']['group']}/{version}"
    assert obj["kind"] == crd["spec"]["names"]["kind"]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    assert not errors, "\n".join(errors)


def check_configmap(cm: dict, recipe) -> None:
    assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] and cm["metadata"]["namespace"]
    assert set(cm["data"]) == {"recipe.yaml"}
    assert all(isinstance(v, str) for v in cm["data"].values())
    assert yaml.safe_load(cm["data"]["recipe.yaml"])["name"] == recipe.name


def pod_script(container: dict, tmp_path: Path) -> str:
    assert container["command"][:2] == ["bash", "-c"]
    bash_n(container["command"][2], tmp_path)
    return container["command"][2]


def test_pytorchjob_validates_against_crd(sft, tmp_path):
    job = K8sJob(sft, image="registry.example/countrytune:0.1", nodes=4, gpus_per_node=8,
                 namespace="ml", pvc="train-data", accelerate_config="zero2")
    cm, pj = yaml.safe_load_all(render(job, "pytorchjob"))
    check_configmap(cm, sft)
    check_against_crd(pj, "kubeflow.org_pytorchjobs.yaml")
    specs = pj["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    pod = specs["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "pytorch"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {v["name"]: v for v in pod["volumes"]}["data"]["persistentVolumeClaim"]["claimName"] == "train-data"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data", "/etc/countrytune", "/dev/shm"}
    script = pod_script(container, tmp_path)
    for part in ('--machine_rank "$RANK"', '--main_process_ip "$MASTER_ADDR"', "--num_machines 4",
                 "--num_processes 32", "--config_file launch/accelerate/zero2.yaml",
                 "-m pipeline.train /etc/countrytune/recipe.yaml", f"--output /data/runs/{sft.run_name}"):
        assert part in script, part
    one = yaml.safe_load_all(render(K8sJob(sft, image="img", nodes=1, gpus_per_node=1)))
    assert "Worker" not in list(one)[1]["spec"]["pytorchReplicaSpecs"]


def test_trainjob_validates_against_crd(sft, tmp_path):
    job = K8sJob(sft, image="registry.example/countrytune:0.1", nodes=2, gpus_per_node=8, pvc="train-data")
    cm, tj = yaml.safe_load_all(render(job, "trainjob"))
    check_configmap(cm, sft)
    check_against_crd(tj, "trainer.kubeflow.org_trainjobs.yaml")
    assert tj["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = tj["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    script = pod_script(trainer, tmp_path)
    assert '--machine_rank "$PET_NODE_RANK"' in script and '"$PET_MASTER_ADDR"' in script
    assert "--num_processes 16" in script


def test_cpu_manifests_validate(tiny, tmp_path):
    job = K8sJob(tiny, image="img", nodes=2, gpus_per_node=0, procs_per_node=2)
    for fmt, spec in (("pytorchjob", "kubeflow.org_pytorchjobs.yaml"),
                      ("trainjob", "trainer.kubeflow.org_trainjobs.yaml")):
        _, obj = yaml.safe_load_all(render(job, fmt))
        check_against_crd(obj, spec)
        assert "nvidia.com/gpu" not in json.dumps(obj)
        assert '{"name": "ACCELERATE_USE_CPU", "value": "1"}' in json.dumps(obj)
        assert "--multi_gpu" in json.dumps(obj)


def test_misspelt_field_is_caught(sft):
    """The strict preprocessing really rejects what the API server would silently drop."""
    _, pj = yaml.safe_load_all(render(K8sJob(sft, image="img", nodes=2, gpus_per_node=8)))
    pj["spec"]["pytorchReplicaSpecs"]["Master"]["replica"] = 1
    _, _, validator = crd_validator("kubeflow.org_pytorchjobs.yaml")
    assert any("replica" in e.message for e in validator.iter_errors(pj))


# ---- local --------------------------------------------------------------------------------

def test_local_command_on_cpu(tiny):
    env, cmd = local_command(tiny, 2, cpu=True, sets=["training.max_steps=5"])
    assert env == {"ACCELERATE_USE_CPU": "1"}
    argv = accelerate_argv(cmd)
    assert "--multi_gpu" in argv and "--cpu" not in argv
    assert argv[argv.index("--num_processes") + 1] == "2"
    assert argv[argv.index("--config_file") + 1] == str(ACCELERATE_DIR / "cpu-multi.yaml")
    assert cmd[-4:] == ["--output", "runs/id-tiny-cpu", "--set", "training.max_steps=5"]
    _, one = local_command(tiny, 1, cpu=True)
    assert "--multi_gpu" not in one
    _, ds = local_command(tiny, 2, cpu=True, config="launch/accelerate/zero2.yaml")
    assert "--multi_gpu" not in ds  # DeepSpeed picks its own launcher; --multi_gpu would override it


def test_local_propagates_exit_code(capsys):
    assert run_local({"X": "1"}, [sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['X']) + 2)"]) == 3
    assert "X=1 " in capsys.readouterr().out
    assert run_local({}, ["definitely-not-a-command"], dry_run=True) == 0
    with pytest.raises(UserError):
        run_local({}, [str(shutil.which("true")) + "-missing"])
