"""A real one-node Slurm cluster on loopback, for tests: munged, slurmctld, slurmd.

Everything (key, sockets, state, spool, logs) lives under one temp folder, the daemons run
in the foreground as children of the test process (so they are stopped by their pid), and
the ports are picked free so that two test sessions on one machine do not meet.
What was needed on Debian's slurm-wlm 22.05 + munge 0.5, as root:
- munged wants its socket folder world-executable and its key folder private (0700, key
  0400); it runs as root without --force when those hold.
- Each client (sinfo, sbatch, scontrol) finds the cluster through SLURM_CONF.
- A requeued job waits 120 s (Slurm's fixed BeginTime delay) before it runs again;
  `release()` sets its start time to now.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from processes import stop

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")

SLURM_CONF = """\
ClusterName={cluster}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobRequeue=1
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
# Finished jobs stay visible to `scontrol show job` for 5 minutes (there is no sacct).
MinJobAge=300
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    """The cluster could not start; the message carries the daemons' log tails."""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Path | None = None, cpus: int = 2) -> None:
        # Not pytest's tmp_path: munged wants every folder above its socket world-executable,
        # and pytest makes its base folder 0700.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="ct-slurm-"))
        self._own_root = root is None
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        root = self.root
        for sub in ("key", "run", "state", "spool", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # munged checks every folder up to its socket
        os.chmod(root / "run", 0o755)
        os.chmod(root / "key", 0o700)
        key = root / "key" / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key), "--bits", "1024", "--force"],
                       check=True, capture_output=True)
        os.chmod(key, 0o400)
        (root / "slurm.conf").write_text(SLURM_CONF.format(
            cluster=f"t{os.getpid()}", host=self.host, root=root, ctld_port=_free_port(),
            slurmd_port=_free_port(), user=_user(), cpus=self.cpus, mem_mb=2000))
        self._spawn("munged", ["munged", "--foreground", f"--socket={root}/run/munge.sock",
                               f"--key-file={key}", f"--log-file={root}/log/munged.log",
                               f"--pid-file={root}/run/munged.pid", f"--seed-file={root}/key/seed"])
        self._wait_for(lambda: (root / "run" / "munge.sock").exists(), 5, "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.host])
        self._wait_for(lambda: self.node_state() == "idle", timeout, "node idle in sinfo")

    def stop(self) -> None:
        if len(self.procs) == 3 and all(p.poll() is None for p in self.procs):
            try:  # end running jobs first so no slurmstepd outlives slurmd
                subprocess.run(["scancel", "--full", "--quiet", "--user", _user()], env=self.env,
                               capture_output=True, timeout=10, check=False)
            except subprocess.TimeoutExpired:
                pass
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            stop(proc)
        self.procs.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - lives with the daemon
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL))

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        raise ClusterError(f"no {what} after {timeout:.0f} s (exited: {dead or 'none'})\n{self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- clients -------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=30)

    def node_state(self) -> str:
        proc = self.run("sinfo", "--noheader", "--format=%T", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def sbatch(self, script: Path, *options: str) -> str:
        return self.run("sbatch", "--parsable", *options, str(script)).stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str | None:
        """The squeue state (PENDING, RUNNING...), or None once the job has left the queue."""
        out = self.run("squeue", "--noheader", "--jobs", job_id, "--format=%T", check=False).stdout.strip()
        return out or None

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key=value pairs (kept MinJobAge seconds after the end)."""
        text = self.run("scontrol", "show", "job", job_id, "--oneliner").stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def release(self, job_id: str) -> None:
        """Start a requeued job now instead of after Slurm's fixed 120 s delay."""
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)

    def wait(self, job_id: str, timeout: float, poll: float = 0.5) -> dict[str, str]:
        """Wait until the job leaves the queue (releasing it if requeued); its final info."""
        deadline = time.monotonic() + timeout
        pending_since = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            now = time.monotonic()
            if state is None:
                return self.job_info(job_id)
            pending_since = (pending_since or now) if state == "PENDING" else None
            # Not at once: slurmd revokes the killed run's credential with a 1-second
            # timestamp, and a relaunch within the same second is refused ("Job credential
            # revoked", the job then FAILS); Slurm's own 120 s requeue delay avoids this.
            if pending_since is not None and now - pending_since >= 2:
                self.release(job_id)
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} still {self.job_state(job_id)} after {timeout} s\n{self.log_tail()}")


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
