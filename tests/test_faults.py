"""Crash injection (issue 16, item 4): SIGKILL at seeded random points of real processes.

- training under 2-process ZeRO-3, a worker (or both) killed at 3 random steps, in a step or in
  a checkpoint write; each rerun resumes from the newest COMPLETE checkpoint and the final
  adapter is bit-identical to an uninterrupted run's;
- a disk that fills during a checkpoint write (a small tmpfs): a clear error, nothing half-written
  marked complete, and after freeing space the rerun resumes and ends identically;
- `countrytune prep` killed (its whole process tree) at 3 random points: the same output files
  byte for byte, every document once;
- exports racing for one version, for two versions, and pushes killed midway, with a reader
  pulling everything it sees meanwhile: no half-written version is ever visible and `latest` is
  always whole.

A failure prints the seed; COUNTRYTUNE_FAULT_SEED=<seed> replays its plan. More seeds, points
and the OCI registry: bench/faults.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fault_injection import (
    ROOT,
    TRAIN_RESUMED,
    adapter,
    adapters_equal,
    complete_steps,
    describe,
    export_command,
    kill_prep,
    kill_push,
    kill_training,
    losses,
    prep_command,
    prep_env,
    prep_kill_plans,
    prep_outputs,
    push_kill_plans,
    run_training,
    seed_from_env,
    train_command,
    train_env,
    train_kill_plans,
    write_corpus,
)


@pytest.fixture
def clean_shm():
    yield
    for f in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"):
        f.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def zero3_reference(sample_prep, tmp_path_factory):
    """The uninterrupted 2-process ZeRO-3 run every killed run must end equal to."""
    root = tmp_path_factory.mktemp("zero3")
    run = root / "reference"
    run_training(train_command(sample_prep, run), train_env(root / "cache"), root / "reference.log")
    return run


def _replay(seed: int, plans) -> str:
    return f"seed {seed} (replay: COUNTRYTUNE_FAULT_SEED={seed}); plan {describe(plans)}"


def test_zero3_training_killed_at_random_steps_ends_bit_identical(sample_prep, zero3_reference, tmp_path, clean_shm):
    seed = seed_from_env(1604)
    plans = train_kill_plans(seed, kills=3)
    run, env = tmp_path / "killed", train_env(zero3_reference.parent / "cache")
    cmd = train_command(sample_prep, run)
    try:
        for i, plan in enumerate(plans):
            kill_training(plan, cmd, env, run, tmp_path / f"attempt{i}.log")
            if i:  # the attempt resumed from the newest checkpoint the previous kill left complete
                assert plan.resumed_from == plans[i - 1].complete_after
                log = (tmp_path / f"attempt{i}.log").read_text()
                assert TRAIN_RESUMED.findall(log) == ([str(plan.resumed_from)] if plan.resumed_from else [])
            assert plan.launcher_exit_s is not None and "outlived" not in plan.note, plan
        log = run_training(cmd, env, tmp_path / "final.log")
        last = plans[-1].complete_after
        assert TRAIN_RESUMED.findall(log) == ([str(last)] if last else [])
        assert "no COMPLETE" in log if plans[-1].partial_after else True  # the killed save is gone
        assert not [p for p in (run / "checkpoints").glob("step-*") if not (p / "COMPLETE").exists()]
        # Every step trained and logged exactly once, with the same loss as without kills...
        assert losses(run) == losses(zero3_reference)
        # ...and the adapter equal bit for bit (every RNG restored per process; gloo's CPU
        # reductions are deterministic).
        assert adapters_equal(adapter(zero3_reference), adapter(run)) == []
    except AssertionError as e:
        raise AssertionError(f"{_replay(seed, plans)}\n{e}") from None


@contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resumes_identically(sample_prep, train_env):
    """The checkpoints folder on a tmpfs that holds one checkpoint and a half: the second save
    fails with a clear error; after the space is freed the rerun resumes from the first and
    ends with the adapter of a run that never ran short."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    from countrytune.errors import UserError
    from pipeline.training.checkpoint import latest_complete
    from pipeline.train import train
    from tests.test_train import _recipe

    recipe = _recipe(sample_prep, "training.max_steps=6", "training.save_every=2",
                     "training.keep_checkpoints=3", "lora.dropout=0.1")
    whole = train_env / "whole"
    train(recipe, whole, progress=False)
    _reset_accelerate()
    size = sum(p.stat().st_size for p in (whole / "checkpoints" / "step-0000002").rglob("*") if p.is_file())

    run = train_env / "run"
    with _tmpfs(run / "checkpoints", f"{int(size * 1.5) // 1024}k"):
        with pytest.raises(UserError, match=r"step-0000004 could not be written: no space left.*"
                                            r"step-0000002, is untouched") as e:
            train(recipe, run, progress=False)
        _reset_accelerate()
        assert "Traceback" not in str(e.value)
        assert complete_steps(run) == [2] and latest_complete(run).name == "step-0000002"
        assert not (run / "checkpoints" / "step-0000004").exists()  # removed, not left half-written
        assert not (run / "DONE").exists()
        subprocess.run(["mount", "-o", f"remount,size={size * 8 // 1024}k", str(run / "checkpoints")], check=True)
        train(recipe, run, progress=False)
        _reset_accelerate()
        assert (run / "DONE").exists() and complete_steps(run) == [2, 4]
    assert [s for s, _ in losses(run)] == [2, 4, 6] and losses(run) == losses(whole)
    assert adapters_equal(adapter(whole), adapter(run)) == []


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def test_prep_killed_at_random_points_writes_the_same_files(tmp_path):
    seed = seed_from_env(1604)
    corpus = tmp_path / "corpus"
    records = write_corpus(corpus, files=4, docs=1500)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep

    # In this process (the same job as the CLI's: workers and output are not part of it).
    run_prep(PrepConfig(country="id", inputs=[str(corpus)], output=str(straight), workers=2), show_progress=False)
    plans = prep_kill_plans(seed, kills=3, shards=4)
    try:
        for i, plan in enumerate(plans):
            kill_prep(plan, prep_command(corpus, killed), killed, tmp_path / f"prep{i}.log")
        assert not all(p.finished_first for p in plans), "no kill landed before prep finished"
        subprocess.run(prep_command(corpus, killed), cwd=ROOT, env=prep_env(), check=True, capture_output=True)
        a, b = prep_outputs(straight), prep_outputs(killed)
        assert sorted(a) == sorted(b)
        # Byte for byte: the same shards, row order, row groups and statistics.
        assert [k for k in a if a[k] != b[k]] == []
        stats = json.loads(b["stats.json"])["totals"]
        assert stats["records_in"] == records == stats["docs_out"] + stats["rejected"]
        import pyarrow.dataset as ds

        kept = ds.dataset(str(killed / "data"), format="parquet").to_table(columns=["id"]).column("id").to_pylist()
        dropped = ds.dataset(str(killed / "rejects"), format="parquet").to_table(columns=["id"]).column("id").to_pylist()
        assert len(kept) == stats["docs_out"] and len(dropped) == stats["rejected"]
        assert len(set(kept + dropped)) == records  # every document once: none lost, none doubled
        assert not list(killed.rglob("*.tmp"))
    except AssertionError as e:
        raise AssertionError(f"{_replay(seed, plans)}\n{e}") from None


# --- the registry ------------------------------------------------------------------------------

def _export_at_once(run: Path, registry: str, versions: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(export_command(run, registry, v), cwd=ROOT, env=prep_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in versions]
    return [subprocess.CompletedProcess(p.args, p.wait(), *p.communicate()) for p in procs]


def _verify_all(registry: str, where: Path) -> dict[str, str]:
    """Pull (verifying every byte) each version `list` shows and `latest`; {version: problem}."""
    from countrytune.errors import UserError
    from pipeline.export import pull
    from pipeline.registry import open_registry

    problems = {}
    for entry in open_registry(registry).packages():
        for version in [*entry.versions, "latest"]:
            target = where / f"{entry.name}-{version}-{os.urandom(4).hex()}"
            try:
                pull(f"{entry.country}/{entry.name}:{version}", registry, target)
            except UserError as e:
                problems[f"{entry.name}:{version}"] = str(e)
            finally:
                shutil.rmtree(target, ignore_errors=True)
    return problems


def test_exports_racing_for_one_version_leave_one_whole_package(zero3_reference, tmp_path):
    registry = str(tmp_path / "registry")
    for version in ("1", "2"):
        results = _export_at_once(zero3_reference, registry, [version, version])
        codes = sorted(r.returncode for r in results)
        assert codes == [0, 2], [r.stderr[-800:] for r in results]
        loser = next(r for r in results if r.returncode == 2)
        assert "immutable" in loser.stderr and "Traceback" not in loser.stderr
    assert _verify_all(registry, tmp_path / "pulled") == {}
    assert not list((tmp_path / "registry").rglob(".incoming-*"))


def test_exports_of_two_versions_at_once_both_land_and_latest_is_one_of_them(zero3_reference, tmp_path):
    from pipeline.registry.refs import Ref
    from pipeline.registry import open_registry

    registry = str(tmp_path / "registry")
    results = _export_at_once(zero3_reference, registry, ["1.0", "1.1"])
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-800:] for r in results]
    entry = open_registry(registry).versions(Ref("id", "tiny-cpu"))
    assert entry.versions == ["1.0", "1.1"] and entry.latest in ("1.0", "1.1")
    assert _verify_all(registry, tmp_path / "pulled") == {}


def test_pushes_killed_midway_never_show_a_half_written_version(zero3_reference, tmp_path):
    """Exports SIGKILLed at seeded random moments after their push began, while a reader pulls
    every version `list` shows and `latest`, over and over."""
    seed = seed_from_env(1604)
    registry = tmp_path / "registry"
    package = registry / "id" / "tiny-cpu"
    subprocess.run(export_command(zero3_reference, str(registry), "0"), cwd=ROOT, env=prep_env(),
                   check=True, capture_output=True)
    seen, problems, stop = [], {}, threading.Event()

    def reader():
        while not stop.is_set():
            found = _verify_all(str(registry), tmp_path / "reader")
            problems.update(found)
            seen.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    # The copy and fsync of this 2 MB package take ~1-30 ms, less on an idle machine: delays
    # spread over them, and attempts go on (up to 16) until 4 have been made and one of them
    # landed mid-push.
    candidates = push_kill_plans(seed, kills=16, max_delay_s=0.02)
    plans = []
    try:
        for plan in candidates:
            plans.append(kill_push(plan, export_command(zero3_reference, str(registry), plan.version),
                                   started=lambda: any(package.glob(".incoming-*")),
                                   published=lambda v=plan.version: (package / v).is_dir()))
            if len(plans) >= 4 and any(p.landed == "mid-push" for p in plans):
                break
            if len(plans) % 4 == 0:  # half of later delays at zero: kill as soon as the push begins
                for p in candidates[len(plans):len(plans) + 2]:
                    p.delay_s = 0.0
        stop.set()
        thread.join()
        assert problems == {} and len(seen) >= 2
        assert any(p.landed == "mid-push" for p in plans), "no kill landed mid-push"
        for plan in plans:  # a killed push left either nothing visible or a whole version
            if (package / plan.version).exists():
                assert _verify_all(str(registry), tmp_path / "after") == {}
        # The next push removes what the killed ones abandoned, and moves latest.
        subprocess.run(export_command(zero3_reference, str(registry), "9"), cwd=ROOT, env=prep_env(),
                       check=True, capture_output=True)
        assert not [p for p in package.glob(".incoming-*")]
        assert (package / "latest").read_text().strip() == "9"
        listing = subprocess.run([*export_command(zero3_reference, str(registry), "x")[:3], "list",
                                  "--registry", str(registry)], cwd=ROOT, env=prep_env(),
                                 capture_output=True, text=True, check=True).stdout
        row = next(x for x in listing.splitlines() if "id/tiny-cpu" in x)  # package | latest | versions
        listed = {v.strip() for v in row.split("│")[-2].split(",")}
        assert listed == {"0", "9"} | {p.version for p in plans if (package / p.version).is_dir()}
    except AssertionError as e:
        raise AssertionError(f"{_replay(seed, plans)}\n{e}") from None
    finally:
        stop.set()
        thread.join()


def test_oci_exports_racing_for_one_version_leave_one_winner(zero3_reference, tmp_path):
    """Two exports of one run started together made byte-identical OCI manifests (the same
    second in `created`), so reading the tag back could not tell them apart: both said
    "pushed". Now exactly one wins and the other is told, round after round."""
    from oci_servers import registry

    with registry(tmp_path / "oci") as base:
        uri = f"oci://{base.removeprefix('http://')}/countrytune"
        for version in ("1", "2"):
            results = _export_at_once(zero3_reference, uri, [version, version])
            assert sorted(r.returncode for r in results) == [0, 2], [r.stderr[-800:] for r in results]
            loser = next(r for r in results if r.returncode == 2)
            assert "immutable" in loser.stderr and "Traceback" not in loser.stderr
        assert _verify_all(uri, tmp_path / "pulled") == {}
