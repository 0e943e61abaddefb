"""Memory and CPU of a command's whole process tree, sampled from /proc while it runs.

    result = run_sampled(["countrytune", "prep", ...], log=Path("ours.log"))

Every `interval` seconds the sampler walks the tree below the command (the command and
every descendant, however deep), and for each process reads RSS and CPU time from
/proc/PID/stat and PSS from /proc/PID/smaps_rollup. RSS counts a page shared by several
processes (a forked worker's copy-on-write pages, a memory-mapped model) once per process;
PSS splits it among them, so the tree's PSS is what the tree really costs the machine.
Both are summed over the tree at each sample and the peak of each sum is kept; a peak
shorter than the interval can be missed. CPU seconds are each process's last sample (so
the last `interval` of each process is missed). MB is 10^6 bytes.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

CLK_TCK, PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
MB = 1_000_000


def read_procs() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds, RSS bytes) of every process, from /proc/PID/stat."""
    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended between listing and reading
            # fields 4, 14, 15 and 24 of proc(5): ppid, utime, stime, rss (pages)
            procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK,
                                      int(fields[21]) * PAGE)
    return procs


def read_pss(pid: int) -> int:
    """Proportional set size in bytes (0 if the process ended or the kernel has no rollup)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def role(pid: int) -> str:
    """A short name for a process: its command line, with multiprocessing's boilerplate cut."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    if "multiprocessing" in text:
        kind = "resource_tracker" if "resource_tracker" in text else "forkserver" if "forkserver" in text \
            else "spawned worker"
        return f"python ({kind})"
    return text[:120]


class TreeSampler:
    """Samples the tree below `root` on a thread until `stop`; see the module docstring."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.cpu: dict[int, float] = {}
        self.per_process: dict[int, dict] = {}  # pid -> role, peak RSS and PSS
        self.timeline: list[tuple[float, int, int, int]] = []  # (s, processes, tree RSS, tree PSS)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.perf_counter()

    def start(self) -> "TreeSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.sample()
            self._stopped.wait(self.interval)

    def sample(self) -> None:
        procs, children = read_procs(), {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        tree, rss_sum, pss_sum, count = [self.root], 0, 0, 0
        while tree:
            pid = tree.pop()
            if pid not in procs:
                continue
            tree += children.get(pid, [])
            _, cpu, rss = procs[pid]
            pss = read_pss(pid)
            self.cpu[pid] = cpu
            info = self.per_process.setdefault(pid, {"role": role(pid), "peak_rss_mb": 0.0, "peak_pss_mb": 0.0})
            info["peak_rss_mb"] = max(info["peak_rss_mb"], rss / MB)
            info["peak_pss_mb"] = max(info["peak_pss_mb"], pss / MB)
            rss_sum, pss_sum, count = rss_sum + rss, pss_sum + pss, count + 1
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss_sum), max(self.peak_pss, pss_sum)
        self.timeline.append((round(time.perf_counter() - self._start, 2), count, rss_sum, pss_sum))

    def result(self) -> dict:
        return {"root_pid": self.root, "peak_rss_mb": self.peak_rss / MB, "peak_pss_mb": self.peak_pss / MB,
                "cpu_s": sum(self.cpu.values()),
                "processes": [{"pid": pid, **info, "cpu_s": self.cpu.get(pid, 0.0)}
                              for pid, info in sorted(self.per_process.items())],
                "timeline_mb": [(t, n, round(r / MB), round(p / MB)) for t, n, r, p in self.timeline]}


def run_sampled(cmd: list[str], log: Path, env: dict | None = None, interval: float = 0.2) -> dict:
    """Run cmd with stdout and stderr to `log`, sampling its tree; exit with its log tail if it fails."""
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(proc.pid, interval).start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        sampler.stop()
    if rc != 0:
        raise SystemExit(f"{cmd[0]} ... exited {rc}; last lines of {log}:\n"
                         + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    return {"wall_s": wall, **sampler.result()}
