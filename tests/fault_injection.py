"""Crash injection: SIGKILL of real `countrytune` processes at seeded random points.

Shared by tests/test_faults.py (a few points, inside `make test`'s budget) and bench/faults.py
(the longer campaign). A seed fixes every kill plan (which step or event, how long after it,
which process); the instruction a kill interrupts still depends on timing, so a failure prints
the seed and the plan, and the same seed replays the same plan.

Nothing here mocks: the trainer runs under `accelerate launch` with 2 processes and DeepSpeed
ZeRO-3, prep with its worker pool, export with the real registries; processes are killed with
SIGKILL, which no handler sees.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.runner import JOB_FILE

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "id" / "tiny-cpu.yaml"
PYTHON = sys.executable
ACCELERATE = Path(PYTHON).parent / "accelerate"
TRAIN_STEPS = 8
# Every step logged and checkpointed, so a kill lands in a step or in a checkpoint write.
TRAIN_SETTINGS = ("training.eval_every=0", "training.sequence_length=128",
                  "tokenizer.train_vocab_size=500", "lora.dropout=0.1", "deepspeed.stage=3",
                  "training.log_every=1", "training.save_every=1")


def seed_from_env(default: int) -> int:
    """COUNTRYTUNE_FAULT_SEED replays a failed run's plan; else the test's fixed seed."""
    return int(os.environ.get("COUNTRYTUNE_FAULT_SEED", default))


# --- processes ------------------------------------------------------------------------------

def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def alive(pid: int, marker: bytes) -> bool:
    """Still running and still the same program (a pid can be reused)."""
    return marker in _cmdline(pid)


def kill(pids, marker: bytes) -> None:
    for pid in pids:
        if alive(pid, marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_gone(pids, marker: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p, marker) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- training -------------------------------------------------------------------------------

def train_env(cache: Path) -> dict[str, str]:
    return dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", COUNTRYTUNE_CACHE=str(cache),
                # DeepSpeed JIT-compiles its CPU ops once (~40 s); keep them between runs.
                TORCH_EXTENSIONS_DIR=str(Path.home() / ".cache" / "countrytune" / "torch_extensions"))


def train_command(prep: Path, out: Path, *extra: str, steps: int = TRAIN_STEPS) -> list[str]:
    sets = [f"data.sources=[{{path: {prep}}}]", f"training.max_steps={steps}", *TRAIN_SETTINGS, *extra]
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pipeline.train", str(TINY),
            "--output", str(out), "--no-progress", *[a for s in sets for a in ("--set", s)]]


def complete_steps(run: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*/COMPLETE"))


def partial_steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*")
                  if p.is_dir() and not (p / "COMPLETE").exists())


def run_training(cmd: list[str], env: dict, log: Path, timeout: float = 400) -> str:
    """One attempt to the end; returns its stderr (AssertionError with the tail if it failed)."""
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f, timeout=timeout)
    text = log.read_text()
    if proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}); {log}:\n{text[-4000:]}")
    return text


@dataclass
class TrainKill:
    """Kill the worker(s) `delay_s` after step `step` began (after checkpoint step-1 was announced,
    or after setup when step-1 is where the attempt resumes)."""

    step: int
    delay_s: float
    victim: str  # rank0, rank1 or both
    during: str = "step"  # or "save": delay_s counts from when checkpoint step-<step> is begun
    # what happened (filled in)
    resumed_from: int | None = None
    logged_step: int | None = None
    complete_after: int | None = None
    partial_after: list[int] = field(default_factory=list)
    launcher_exit_s: float | None = None
    note: str = ""

    def where(self) -> str:
        if self.partial_after:
            return f"during checkpoint write (step-{self.partial_after[-1]} left without COMPLETE)"
        return "during a step"


def train_kill_plans(seed: int, kills: int, steps: int = TRAIN_STEPS) -> list[TrainKill]:
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(1, steps - 1), kills))
    # A step plus its checkpoint took 0.6-1.0 s here, the save alone ~0.1-0.3 s: "step" kills
    # land anywhere in either, "save" kills inside the checkpoint write.
    plans = []
    for s in targets:
        during = rng.choice(["step", "save"])
        plans.append(TrainKill(step=s, during=during, victim=rng.choice(["rank0", "rank1", "both"]),
                               delay_s=round(rng.uniform(0.0, 1.2 if during == "step" else 0.15), 3)))
    return plans


def _logged_steps(run: Path) -> int | None:
    path = run / "metrics.jsonl"
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError):
                continue
    return max(steps, default=None)


def kill_training(plan: TrainKill, cmd: list[str], env: dict, run: Path, log: Path) -> TrainKill:
    """Start an attempt, SIGKILL its worker(s) at the planned point, wait for the launcher to go.
    The anchor is this attempt's own stderr (a fresh file), never a file an earlier attempt left."""
    done = complete_steps(run)
    plan.resumed_from = done[-1] if done else None
    start = plan.resumed_from or 0
    if plan.step <= start:  # an earlier kill landed late: the run is already past the planned step
        plan.note = f"planned step {plan.step} already done; killed at step {start + 1}"
        plan.step = start + 1
    anchor = (f"checkpoint {run / 'checkpoints' / f'step-{plan.step - 1:07d}'}" if plan.step - 1 > start
              else "process(es) on cpu")
    with log.open("w") as f:
        launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f,
                                    start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while anchor not in log.read_text():
            if launcher.poll() is not None:
                raise AssertionError(f"attempt ended before the kill point ({launcher.returncode}); "
                                     f"plan {plan}; {log}:\n{log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"kill point never reached: {plan}"
            time.sleep(0.01)
        if plan.during == "save":  # created by the main process as the save begins
            saving = run / "checkpoints" / f"step-{plan.step:07d}"
            while not saving.exists() and launcher.poll() is None:
                assert time.monotonic() < deadline, f"checkpoint never begun: {plan}"
                time.sleep(0.002)
        time.sleep(plan.delay_s)
        workers = [p for p in children(launcher.pid) if alive(p, b"pipeline.train")]
        ranks = {rank_of(p): p for p in workers}
        assert set(ranks) == {0, 1}, f"expected ranks 0 and 1 under the launcher, found {ranks}"
        victims = [ranks[0], ranks[1]] if plan.victim == "both" else [ranks[int(plan.victim[-1])]]
        kill(victims, b"pipeline.train")
        t0 = time.monotonic()
        try:
            launcher.wait(timeout=90)
            plan.launcher_exit_s = round(time.monotonic() - t0, 2)
        except subprocess.TimeoutExpired:
            plan.note += " launcher did not exit within 90 s of the kill;"
        if not wait_gone(workers, b"pipeline.train", 30):
            plan.note += " a surviving worker outlived the job;"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        kill(workers, b"pipeline.train")
        wait_gone(workers, b"pipeline.train", 10)
    plan.logged_step = _logged_steps(run)
    done = complete_steps(run)
    plan.complete_after = done[-1] if done else None
    plan.partial_after = partial_steps(run)
    assert not (run / "DONE").exists(), f"the run finished before the kill: {plan}"
    return plan


def losses(run: Path) -> list[tuple[int, float]]:
    """(step, train loss) of every logged step, in file order."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


def adapters_equal(a: dict, b: dict) -> list[str]:
    """Names of tensors that differ (torch.equal: no tolerance), or that only one side has."""
    import torch

    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]


# --- prep -----------------------------------------------------------------------------------

def write_corpus(folder: Path, files: int, docs: int, seed: int = 7) -> int:
    """A synthetic corpus from the sample sentences (with PII and duplicates); returns the
    number of records (also tests/test_prep_run.py's big corpus)."""
    import yaml

    bank = yaml.safe_load((ROOT / "data_prep" / "sample_corpus" / "sentences.yaml").read_text())
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for f in range(files):
        with open(folder / f"part{f}.jsonl", "w") as out:
            for i in range(docs):
                lang = rng.choice(sorted(bank))
                text = " ".join(rng.sample(bank[lang], 3))
                if i % 50 == 0:
                    text += " Hubungi 0812-3456-7890."
                out.write(json.dumps({"id": f"{f}-{i}", "lang": lang, "text": text}) + "\n")
    return files * docs


def prep_command(corpus: Path, out: Path, workers: int = 2) -> list[str]:
    return [PYTHON, "-m", "countrytune", "prep", "--country", "id", "--input", str(corpus),
            "--output", str(out), "--workers", str(workers), "--no-progress"]


def prep_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def markers(out: Path) -> int:
    """Shards finished so far: pass-one markers plus final ones."""
    work = out / "_work"
    return len(list(work.glob("pass1/*.done"))) + len(list(work.glob("final/*.done")))


@dataclass
class PrepKill:
    """Kill the whole prep process tree `delay_s` after `after_markers` shard markers exist."""

    after_markers: int
    delay_s: float
    markers_at_kill: int | None = None
    finished_first: bool = False
    note: str = ""


def prep_kill_plans(seed: int, kills: int, shards: int) -> list[PrepKill]:
    rng = random.Random(seed)
    points = sorted(rng.sample(range(0, 2 * shards), kills))
    return [PrepKill(after_markers=k, delay_s=round(rng.uniform(0.0, 0.4), 3)) for k in points]


def kill_prep(plan: PrepKill, cmd: list[str], out: Path, log: Path) -> PrepKill:
    """Start prep in its own process group (the pool's workers join it) and SIGKILL the group."""
    already = markers(out) if out.exists() else 0
    if plan.after_markers < already:
        plan.note = f"planned after {plan.after_markers} markers; {already} already there"
        plan.after_markers = already
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=prep_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and markers(out) >= plan.after_markers and
                   (plan.after_markers > already or (out / JOB_FILE).exists())):
            if proc.poll() is not None:
                break
            assert time.monotonic() < deadline, f"prep never reached {plan}"
            time.sleep(0.005)
        time.sleep(plan.delay_s)
        plan.finished_first = proc.poll() is not None
        plan.markers_at_kill = markers(out)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return plan


def prep_outputs(out: Path) -> dict[str, bytes]:
    """Every file prep leaves outside _work, by relative path (stats.json minus its date and
    output path, which name the run, not its content)."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith("_work/") and rel != ".lock":  # the run's lock names its pid
            files[rel] = path.read_bytes()
    stats = json.loads(files["stats.json"])
    stats.pop("created", None)
    stats["config"].pop("output", None)
    files["stats.json"] = json.dumps(stats, sort_keys=True).encode()
    files.pop("DATA_CARD.md", None)  # rendered from stats.json (it names the output folder)
    return files


# --- registry -------------------------------------------------------------------------------

def export_command(run: Path, registry: str, version: str) -> list[str]:
    return [PYTHON, "-m", "countrytune", "export", str(run), "--registry", registry, "--version", version]


@dataclass
class PushKill:
    """SIGKILL an export `delay_s` after its push began (a `.incoming-*` folder appeared in a
    local registry; the first blob upload for OCI)."""

    version: str
    delay_s: float
    landed: str = ""  # before the push / mid-push / after publishing


def push_kill_plans(seed: int, kills: int, max_delay_s: float) -> list[PushKill]:
    rng = random.Random(seed)
    return [PushKill(version=f"k{i}", delay_s=round(rng.uniform(0.0, max_delay_s), 4)) for i in range(kills)]


def kill_push(plan: PushKill, cmd: list[str], started, published) -> PushKill:
    """started(): the push has begun; published(): the version is visible."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=prep_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not started() and proc.poll() is None:
            assert time.monotonic() < deadline, f"push never began: {plan}"
            time.sleep(0.0005)
        if plan.delay_s:
            time.sleep(plan.delay_s)
        # Frozen first, so where the kill lands is read while nothing moves: a push of this
        # small package can finish between a kill and a look at the registry.
        os.killpg(proc.pid, signal.SIGSTOP)
        ended = proc.poll() is not None
        landed = "after it ended" if ended else ("after publishing" if published() else "mid-push")
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        landed = "after it ended"
    finally:
        proc.wait()
        proc.stderr.close()
    plan.landed = landed
    return plan


def plan_table(rows: list[dict]) -> str:
    """Markdown table of dicts (same keys)."""
    if not rows:
        return ""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def describe(plans) -> str:
    return json.dumps([asdict(p) for p in plans])


TRAIN_RESUMED = re.compile(r"resuming from checkpoint \S+ \(step (\d+)\)")
