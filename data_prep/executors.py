"""Where shard tasks run (this machine's process pool, default, or a Ray cluster), and how
one shard runs: `run_shard` chains its steps and owns what says it ran, its stats file and
its completion marker.

Both executors run the same task functions over the same shards and completion markers, so
a run started on one can be resumed on the other. With Ray, every node must see the output
folder at the same path (a shared file system), as Slurm and Kubernetes jobs already do.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

from countrytune.document import Document, Reject
from countrytune.errors import UserError
from countrytune.folder_lock import die_with_parent
from data_prep.shard_files import write_json
from data_prep.step import ShardContext

Progress = Callable[[tuple[str, int]], None]


class Source(Protocol):
    """A shard's first step: documents from nothing (an input file, pass one's output)."""

    def read(self, ctx: ShardContext) -> Iterator[Document]:
        """The shard's documents; what cannot be read goes to `ctx.reject`, counted."""
        ...

    def input_record(self) -> dict[str, Any]:
        """The shard's input as its stats file records it. Asked once the shard's files are
        committed and before its marker, so a source can still refuse an input that changed."""
        ...


class Transform(Protocol):
    """A step between source and sink: a keep-or-drop `Step`, or one that attaches values."""

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        ...


class Sink(Protocol):
    """A shard's last step: takes its kept documents and every reject under temporary names,
    and puts them in place on `commit`."""

    def reject(self, reject: Reject) -> None:
        ...

    def write(self, docs: Iterable[Document], ctx: ShardContext) -> None:
        ...

    def commit(self) -> None:
        ...


ShardStep = Source | Transform | Sink  # a shard's steps: one Source, Transforms, one Sink


def run_shard(steps: Sequence[ShardStep], marker: Path, stats: Path, progress: Any, *, started: float,
              spent: Mapping[str, float] | None = None) -> None:
    """Run one shard through `steps`: a Source first, a Sink last, Transforms between. Its
    files are committed only once every stage balances, and its `marker` is written last, after
    its `stats`: a shard killed before that is done again whole by the next run, never counted
    twice. started: process time at which the task began; spent: CPU seconds it spent on
    something before its steps ran (pass one: loading the models), by what."""
    source, *transforms, sink = steps
    ctx = ShardContext(sink.reject, lambda count: progress.put(("docs", count)))
    ctx.cpu_seconds.update(spent or {})
    docs = source.read(ctx)
    for step in transforms:
        docs = step.run(docs, ctx)
    sink.write(docs, ctx)
    ctx.check_balance()
    sink.commit()
    write_json(stats, {**source.input_record(),
                       "stages": {name: counts.to_dict() for name, counts in ctx.stats.items()},
                       "cpu_seconds": _cpu_seconds(ctx, started)})
    marker.touch()
    progress.put(("shard", 1))


def _cpu_seconds(ctx: ShardContext, started: float) -> dict[str, float]:
    """A shard's CPU seconds per stage; reading, writing and the rest are what is left."""
    stages = {name: round(seconds, 3) for name, seconds in ctx.cpu_seconds.items()}
    rest = time.process_time() - started - sum(ctx.cpu_seconds.values())
    return {**stages, "read, write, other": round(rest, 3)}


class _Direct:
    """Stands in for a progress queue when a task runs in this process."""

    def __init__(self, callback: Progress) -> None:
        self.put = callback


class _Discard:
    """Progress sink of a task on a Ray worker: the driver counts finished shards instead."""

    def put(self, message: tuple[str, int]) -> None:
        pass


class LocalExecutor:
    """This machine: in this process for one worker (or one task), else a pool of spawned
    processes, kept until `recycle` (between the passes) or `close`."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        self.progress: Any = None

    def run(self, fn: Callable, tasks: list[tuple], on_progress: Progress) -> None:
        """Run fn(*task, progress) for each task; a worker's exception ends the run here."""
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                fn(*task, _Direct(on_progress))
            return
        # A few tasks ahead of the workers, not all: each submitted task is a future held
        # here until it ends, and a national crawl is tens of thousands of shards.
        queued = iter(tasks)
        pending: set = set()
        while True:
            pending |= {self._pool().submit(_call, fn, task)
                        for task in itertools.islice(queued, 2 * self.workers - len(pending))}
            if not pending:
                break
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            self._drain(on_progress)
        self._drain(on_progress)

    def call(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) in a worker of the pool (in this process for one worker), so that what
        it reads and frees stays out of the main process, which lives for the whole run."""
        if self.workers == 1:
            return fn(*args)
        return self._pool().submit(fn, *args).result()

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            # spawn, not fork: the parent runs a progress thread, and fork copies locks held by it.
            ctx = mp.get_context("spawn")
            self.progress = ctx.Queue()
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_start_worker,
                                            initargs=(self.progress,))
        return self.pool

    def _drain(self, on_progress: Progress) -> None:
        try:
            while True:
                on_progress(self.progress.get_nowait())
        except queue_mod.Empty:
            pass

    def recycle(self) -> None:
        """Fresh worker processes for the tasks that follow. A worker's heap keeps the high
        water of everything it ran: over 4 MB shards, pass two peaked at ~193 MB of RSS in a
        process that had run pass one, 156-168 in fresh ones. Costs one spawn and import."""
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.progress.close()
            self.pool = self.progress = None


_worker_progress: Any = None  # this worker's end of the run's progress queue


def _start_worker(progress: Any) -> None:
    global _worker_progress
    # A worker must not outlive the run: after `kill -9` of prep's main process, workers went
    # on writing shards into a folder a rerun was about to use.
    die_with_parent(signal.SIGKILL)
    _worker_progress = progress
    _answer_pyarrow_no_pandas()
    import pyarrow as pa

    # Arrow's default pool (mimalloc) keeps what a row group's encoding freed; with malloc's,
    # Python reuses it. Pass one over three 6 MB shards peaked at 183 MB of RSS against 191-195.
    pa.set_memory_pool(pa.system_memory_pool())
    _return_big_blocks_to_the_system()


def _return_big_blocks_to_the_system() -> None:
    """glibc malloc serves blocks over 128 KB from mmap and returns freed heap past 128 KB at
    once, instead of raising both limits as a process runs (its default): 3 KB documents,
    row groups and numpy blocks of every size then leave less unusable heap behind. Pass one
    over two long-document shards peaked at 169 MB against 183, pass two over four at 160
    against 180; the price is page faults (1.45M against 0.24M), ~10% more CPU in pass one.
    A trim threshold alone saved nothing. Not glibc (musl, macOS): nothing to set."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, from <malloc.h>
    libc.mallopt(m_mmap_threshold, 128 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)


def _call(fn: Callable, task: tuple) -> None:
    fn(*task, _worker_progress)


def _answer_pyarrow_no_pandas() -> None:
    """pyarrow imports pandas (which imports pyarrow.compute) the first time `pa.array` is
    given a Python list, only to ask whether it is a pandas object: 54 MB more RSS in every
    worker, measured. A prep worker never hands it one, so pyarrow is asked once while pandas
    cannot be imported, and remembers the answer (pyarrow 26); pandas itself stays
    importable. Were pyarrow to ask differently, only the saving would be lost."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    hide = _HidePandas()
    sys.meta_path.insert(0, hide)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(hide)


class _HidePandas:
    """An import finder under which `import pandas` fails."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ImportError("pandas is hidden while pyarrow asks whether it is installed")
        return None


class RayExecutor:
    """Connects to a Ray cluster (or starts a local one) for the length of a run."""

    def __init__(self, address: str | None, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'countrytune[ray]'") from None
        self.ray = ray
        self.workers = workers
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
        # Tasks in flight: enough to keep every CPU of the cluster busy, not every shard's
        # arguments in the object store at once.
        ahead = 2 * max(self.workers, int(self.ray.cluster_resources().get("CPU", 1)))
        queued = iter(tasks)
        pending: list = []
        while True:
            pending += [remote.remote(*task, _Discard()) for task in itertools.islice(queued, ahead - len(pending))]
            if not pending:
                break
            done, pending = self.ray.wait(pending, num_returns=1)
            try:
                self.ray.get(done[0])
            except self.ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            on_progress(("shard", 1))

    def call(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) here, in the driver."""
        return fn(*args)

    def recycle(self) -> None:
        """Ray starts and retires its own worker processes."""

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(kind: str, workers: int, ray_address: str | None) -> LocalExecutor | RayExecutor:
    return RayExecutor(ray_address, workers) if kind == "ray" else LocalExecutor(workers)
