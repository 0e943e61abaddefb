"""Where shard tasks run: this machine's process pool (default) or a Ray cluster.

Both run the same task functions over the same shards and completion markers, so a run
started on one can be resumed on the other. With Ray, every node must see the output
folder at the same path (a shared file system), as Slurm and Kubernetes jobs already do.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from countrytune.errors import UserError

Progress = Callable[[tuple[str, int]], None]


class _Direct:
    """Stands in for a progress queue when a task runs in this process."""

    def __init__(self, callback: Progress) -> None:
        self.put = callback


class _Discard:
    """Progress sink of a task on a Ray worker: the driver counts finished shards instead."""

    def put(self, message: tuple[str, int]) -> None:
        pass


class LocalExecutor:
    """This machine: in this process for one worker, else a pool of spawned processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, fn: Callable, tasks: list[tuple], on_progress: Progress) -> None:
        run_local(fn, tasks, self.workers, on_progress)

    def close(self) -> None:
        pass


def run_local(fn: Callable, tasks: list[tuple], workers: int, on_progress: Progress) -> None:
    """Run fn(*task, progress) for each task, in this process or a spawn pool."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            fn(*task, _Direct(on_progress))
        return
    # spawn, not fork: the parent runs a progress thread, and fork copies locks held by it.
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx) as pool:
        progress = manager.Queue()
        pending = {pool.submit(fn, *task, progress) for task in tasks}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # a worker's exception ends the run here, with its message
            try:
                while True:
                    on_progress(progress.get_nowait())
            except queue_mod.Empty:
                pass


class RayExecutor:
    """Connects to a Ray cluster (or starts a local one) for the length of a run."""

    def __init__(self, address: str | None, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'countrytune[ray]'") from None
        self.ray = ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes ~/.ray/auth_token
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kwargs = {"address": address} if address else {
                "num_cpus": workers, "include_dashboard": False,
                # a short path: Ray's Unix sockets live under it (limit ~107 characters)
                "_temp_dir": f"/tmp/ray-countrytune-{os.getuid()}"}
            ray.init(log_to_driver=False, ignore_reinit_error=True, **kwargs)

    def run(self, fn: Callable, tasks: list[tuple], on_progress: Progress) -> None:
        remote = self.ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(*task, _Discard()) for task in tasks]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            try:
                self.ray.get(done[0])
            except self.ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            on_progress(("shard", 1))

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(kind: str, workers: int, ray_address: str | None) -> LocalExecutor | RayExecutor:
    return RayExecutor(ray_address, workers) if kind == "ray" else LocalExecutor(workers)
