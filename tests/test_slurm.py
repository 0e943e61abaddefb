"""`countrytune launch slurm` against a real one-node Slurm cluster on loopback.

The cluster (tests/slurm_cluster.py) starts once per module in ~1 s; tests skip with the
reason when Slurm or munge is missing (`make services` installs them) or will not start.
- A trivial sbatch job, then the rendered script end to end with a stub trainer that keeps
  the trainer's contract (checkpoints with COMPLETE, resume, adapter, DONE): these need
  only Slurm and accelerate.
- TRAINER E2E (test_trainer_e2e_*): the real tiny-cpu recipe, trained and requeued through
  Slurm; they skip until `pipeline.train` imports. ~1-3 minutes each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from slurm_cluster import ClusterError, SlurmCluster, missing_binaries

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes" / "id" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def cluster():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm/munge binaries missing: {', '.join(missing)} (run `make services` as root)")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs; run these tests as root")
    c = SlurmCluster()
    try:
        c.start()
    except (ClusterError, subprocess.CalledProcessError) as e:
        c.stop()
        pytest.skip(f"Slurm would not start: {e}")
    yield c
    c.stop()


def launch_slurm(cluster: SlurmCluster, *args: str) -> subprocess.CompletedProcess:
    """`countrytune launch slurm ...` in a subprocess, with the cluster's SLURM_CONF."""
    return subprocess.run([sys.executable, "-m", "launch.cli", "slurm", *args], cwd=ROOT, env=cluster.env,
                          capture_output=True, text=True, timeout=60, check=False)


def logs(run: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((run / "logs").glob("slurm-*")))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def complete_checkpoints(run: Path) -> list[Path]:
    return sorted(p.parent for p in (run / "checkpoints").glob("step-*/COMPLETE"))


def test_trivial_job_completes(cluster, tmp_path):
    script = tmp_path / "hello.sbatch"
    script.write_text(textwrap.dedent("""\
        #!/bin/bash
        #SBATCH --output=%x-%j.out
        echo "hello from job $SLURM_JOB_ID node $SLURM_NODEID"
        srun --ntasks=1 bash -c 'echo "task $SLURM_PROCID on $(scontrol show hostnames $SLURM_JOB_NODELIST)"'
        """))
    job = cluster.sbatch(script, f"--chdir={tmp_path}")
    info = cluster.wait(job, timeout=30)
    assert info["JobState"] == "COMPLETED", info
    assert info["ExitCode"] == "0:0"
    out = (tmp_path / f"hello.sbatch-{job}.out").read_text()
    assert f"hello from job {job} node 0" in out
    assert f"task 0 on {cluster.host}" in out


# A stand-in for pipeline.train that keeps its contract, so the launch path (sbatch script,
# srun, accelerate launch on CPU, trap, requeue, resume) is tested without the trainer.
STUB_TRAINER = '''\
import argparse, json, os, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("recipe")
p.add_argument("--output", required=True)
p.add_argument("--set", action="append", default=[])
a = p.parse_args()
sets = dict(s.split("=", 1) for s in a.set)
steps, every = int(sets.get("training.max_steps", 6)), int(sets.get("training.save_every", 2))
out = Path(a.output)
rank = int(os.environ.get("RANK", 0))
(out / "ranks").mkdir(parents=True, exist_ok=True)
(out / "ranks" / f"rank{rank}-of-{os.environ.get('WORLD_SIZE', 1)}").touch()
if rank != 0:
    sys.exit(0)
start = 0
for name in ("STOP", "PREEMPTED"):  # as the trainer does: a served request is not this attempt's
    (out / name).unlink(missing_ok=True)
done = sorted((out / "checkpoints").glob("step-*/COMPLETE"))
if done:
    start = int(done[-1].parent.name.split("-")[1])
    print(f"resuming from checkpoint {done[-1].parent} (step {start})", flush=True)
for step in range(start + 1, steps + 1):
    time.sleep(float((Path(__file__).parent / "step_s").read_text()))
    stop = (out / "STOP").exists()
    if step % every == 0 or stop:
        ck = out / "checkpoints" / f"step-{step:07d}"
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "state.json").write_text(json.dumps({"step": step}))
        (ck / "COMPLETE").touch()
    if stop:  # the trainer's contract (pipeline/training/run_folder.py): checkpoint, mark, stop
        (out / "PREEMPTED").write_text(f"stopped after step {step} on STOP\\n")
        (out / "STOP").unlink()
        print(f"stub stopped after step {step}", flush=True)
        sys.exit(0)
(out / "adapter").mkdir(exist_ok=True)
(out / "adapter" / "adapter_model.safetensors").write_bytes(b"stub" * 8)
(out / "adapter" / "adapter_config.json").write_text("{}")
(out / "DONE").touch()
print("stub training done", flush=True)
'''


@pytest.fixture
def stub(tmp_path):
    """(workdir holding stub_train.py, a minimal recipe)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "stub_train.py").write_text(STUB_TRAINER)
    recipe = work / "recipe.yaml"
    recipe.write_text(f"extends: {TINY_RECIPE}\nname: stub\n")  # valid; the stub ignores it
    (work / "step_s").write_text("0.05")  # seconds per stub step
    return work, recipe


def test_rendered_script_runs_two_cpu_processes(cluster, stub, tmp_path):
    work, recipe = stub
    run = tmp_path / "run"
    proc = launch_slurm(cluster, str(recipe), "--nodes", "1", "--gpus-per-node", "0", "--procs-per-node", "2",
                        "--output", str(run), "--workdir", str(work), "--module", "stub_train", "--submit")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    info = cluster.wait(job, timeout=90)
    assert info["JobState"] == "COMPLETED", f"{info}\n{logs(run)}"
    assert (run / "DONE").exists(), logs(run)
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    # accelerate started two processes (the --multi_gpu + ACCELERATE_USE_CPU path), not one
    assert sorted(p.name for p in (run / "ranks").iterdir()) == ["rank0-of-2", "rank1-of-2"]
    assert (run / "logs" / "job.sbatch").exists()


def test_usr1_trap_requeues_and_resumes(cluster, stub, tmp_path):
    """The USR1 Slurm sends before the time limit asks the trainer to checkpoint and stop; the
    job then requeues itself and resumes from that checkpoint."""
    work, recipe = stub
    (work / "step_s").write_text("0.2")  # slow enough to signal it mid-run
    run = tmp_path / "run"
    proc = launch_slurm(cluster, str(recipe), "--gpus-per-node", "0", "--output", str(run), "--workdir",
                        str(work), "--module", "stub_train", "--set", "training.max_steps=30",
                        "--set", "training.save_every=5", "--submit")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    wait_for(lambda: complete_checkpoints(run), 60, f"a complete checkpoint\n{logs(run)}")
    # What `--signal=B:USR1@120` delivers: the signal to the batch shell only.
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    info = cluster.wait(job, timeout=120)
    text = logs(run)
    assert info["JobState"] == "COMPLETED", f"{info}\n{text}\n{cluster.log_tail()}"
    assert int(info["Restarts"]) >= 1, text
    assert "USR1: asking the trainer to checkpoint and stop" in text
    assert "stub stopped after step" in text and "requeueing job" in text
    assert "resuming from checkpoint" in text
    assert (run / "DONE").exists()


def test_submit_reports_sbatch_failure(cluster, stub, tmp_path):
    work, recipe = stub
    proc = launch_slurm(cluster, str(recipe), "--gpus-per-node", "0", "--partition", "no-such-partition",
                        "--output", str(tmp_path / "run"), "--workdir", str(work), "--submit")
    assert proc.returncode == 2
    assert "sbatch failed" in proc.stderr and "partition" in proc.stderr.lower()


# ---- TRAINER E2E: the real trainer on the tiny-cpu recipe (skip until pipeline.train imports) ----

def _trainer_missing() -> str | None:
    proc = subprocess.run([sys.executable, "-c", "import pipeline.train"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny_cpu_sets(tmp_path_factory):
    """`--set` overrides pointing tiny-cpu at freshly prepared shards (prep-sample, ~10 s)."""
    why = _trainer_missing()
    if why:
        pytest.skip(f"pipeline.train does not import yet: {why}")
    prep = tmp_path_factory.mktemp("prep") / "prep"
    subprocess.run([sys.executable, "-m", "countrytune", "prep", "--config", "recipes/id/prep-sample.yaml",
                    "--output", str(prep), "--no-progress"], cwd=ROOT, check=True, capture_output=True,
                   timeout=120)
    return ["--set", f"data.sources=[{{path: {prep}}}]"]


def test_trainer_e2e_tiny_cpu_on_slurm(cluster, tiny_cpu_sets, tmp_path):
    run = tmp_path / "run"
    proc = launch_slurm(cluster, str(TINY_RECIPE), "--nodes", "1", "--gpus-per-node", "0",
                        "--procs-per-node", "1", "--output", str(run), *tiny_cpu_sets, "--submit")
    assert proc.returncode == 0, proc.stderr
    info = cluster.wait(proc.stdout.strip(), timeout=240)
    assert info["JobState"] == "COMPLETED", f"{info}\n{logs(run)[-4000:]}"
    assert (run / "DONE").exists()
    adapter = run / "adapter" / "adapter_model.safetensors"
    assert adapter.stat().st_size > 0
    assert (run / "adapter" / "adapter_config.json").stat().st_size > 0


def test_trainer_e2e_requeue_resumes(cluster, tiny_cpu_sets, tmp_path):
    run = tmp_path / "run"
    proc = launch_slurm(cluster, str(TINY_RECIPE), "--gpus-per-node", "0", "--output", str(run), *tiny_cpu_sets,
                        "--set", "training.max_steps=60", "--set", "training.save_every=10", "--submit")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    wait_for(lambda: complete_checkpoints(run), 180, f"a complete checkpoint\n{logs(run)[-4000:]}")
    cluster.run("scontrol", "requeue", job)
    info = cluster.wait(job, timeout=240)
    text = logs(run)
    assert info["JobState"] == "COMPLETED", f"{info}\n{text[-4000:]}"
    assert int(info["Restarts"]) >= 1
    assert "resuming from checkpoint" in text, text[-4000:]
    assert (run / "DONE").exists()
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_trainer_e2e_time_limit_signal_checkpoints_the_current_step(cluster, tiny_cpu_sets, tmp_path):
    """No periodic checkpoints (save_every 0, the default): before, a job past its time limit
    restarted from step 0 forever. USR1 now makes the trainer checkpoint its current step, the
    job requeues, and the rerun resumes from there."""
    run = tmp_path / "run"
    proc = launch_slurm(cluster, str(TINY_RECIPE), "--gpus-per-node", "0", "--output", str(run), *tiny_cpu_sets,
                        "--set", "training.max_steps=150", "--set", "training.save_every=0",
                        "--set", "training.log_every=1", "--set", "training.eval_every=0", "--submit")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 5, 180,
             f"five logged steps\n{logs(run)[-4000:]}")
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    info = cluster.wait(job, timeout=300)
    text = logs(run)
    assert info["JobState"] == "COMPLETED", f"{info}\n{text[-4000:]}"
    assert int(info["Restarts"]) >= 1, text[-4000:]
    assert "on STOP: checkpoint written" in text, text[-4000:]
    resumed = re.search(r"resuming from checkpoint .* \(step (\d+)\)", text)
    assert resumed and int(resumed.group(1)) >= 5, text[-4000:]
    assert (run / "DONE").exists() and not (run / "PREEMPTED").exists()
