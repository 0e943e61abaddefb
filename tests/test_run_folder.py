"""One run folder, one trainer, one recipe: --no-resume clears the old run, a resume with a
different recipe is refused with the difference named, a second trainer is refused, and
leftovers of killed writers never break a rerun."""

from __future__ import annotations

import json

import pytest

from countrytune.errors import UserError
from pipeline.training.run_folder import RunLock
from tests.test_train import _adapter, _recipe


def _steps(path):
    """Steps of the training-loss lines (eval lines carry a step too)."""
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "train/loss" in r]


def test_no_resume_clears_the_old_run_so_its_checkpoints_are_never_resumed(sample_prep, train_env):
    from pipeline.train import train

    run = train_env / "run"
    train(_recipe(sample_prep, "training.max_steps=6", "training.save_every=2",
                  "training.keep_checkpoints=5"), run, progress=False)
    old = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert old == ["step-0000002", "step-0000004"]
    # A new, shorter run into the same folder: before the fix, its resume would pick the old
    # run's step-4 checkpoint (pruning keeps the highest steps).
    train(_recipe(sample_prep, "training.max_steps=3", "training.save_every=2", "lora.r=4"),
          run, resume=False, progress=False, stop_after=2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002"]
    assert not (run / "adapter").exists() and not (run / "DONE").exists()
    train(_recipe(sample_prep, "training.max_steps=3", "training.save_every=2", "lora.r=4"),
          run, progress=False)
    assert _steps(run / "metrics.jsonl") == [2, 3]  # the old run's lines are gone too
    assert any(v.shape[0] == 4 for k, v in _adapter(run).items() if "lora_A" in k)


def test_resume_with_another_recipe_is_refused_naming_the_difference(sample_prep, train_env):
    from pipeline.train import train

    run = train_env / "run"
    train(_recipe(sample_prep, "training.max_steps=4", "training.save_every=2"), run,
          progress=False, stop_after=2)
    with pytest.raises(UserError, match=r"lora\.r: 8 -> 4.*--no-resume"):
        train(_recipe(sample_prep, "training.max_steps=4", "training.save_every=2", "lora.r=4"),
              run, progress=False)
    # Cadence may change between attempts; the run then finishes from its checkpoint.
    train(_recipe(sample_prep, "training.max_steps=4", "training.save_every=2",
                  "training.log_every=1"), run, progress=False)
    assert (run / "DONE").exists()


def test_resume_redoes_logs_after_the_checkpoint_and_ignores_killed_writes(sample_prep, train_env):
    from pipeline.train import train

    run = train_env / "run"
    recipe = _recipe(sample_prep, "training.max_steps=4", "training.save_every=2", "training.log_every=1")
    train(recipe, run, progress=False, stop_after=2)
    # What a kill at step 3 leaves: its log line, a half-written line, a temporary adapter
    # folder and a truncated temporary tokenizer.
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "train/loss": 9.9}) + "\n" + '{"step": 4, "train/lo')
    (run / ".adapter.0123abcd.tmp").mkdir()
    (run / ".adapter.0123abcd.tmp" / "adapter_model.safetensors").write_bytes(b"")
    (run / ".tokenizer.4567.tmp").mkdir()
    (run / ".tokenizer.4567.tmp" / "tokenizer.json").write_text('{"trunc')
    train(recipe, run, progress=False)
    assert _steps(run / "metrics.jsonl") == [1, 2, 3, 4]
    assert 9.9 not in [json.loads(x).get("train/loss") for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not list(run.glob(".*.tmp"))


def test_a_second_trainer_in_the_same_folder_is_refused(sample_prep, train_env):
    from pipeline.train import train

    run = train_env / "run"
    lock = RunLock(run)  # another trainer holds the folder
    try:
        with pytest.raises(UserError, match="in use by another trainer"):
            train(_recipe(sample_prep), run, progress=False)
    finally:
        lock.release()
    train(_recipe(sample_prep), run, progress=False)  # free again
    assert (run / "DONE").exists()


def test_checkpoints_load_without_unpickling_code(sample_prep, train_env):
    import torch

    from pipeline.train import train

    run = train_env / "run"
    recipe = _recipe(sample_prep, "training.max_steps=4", "training.save_every=2")
    train(recipe, run, progress=False, stop_after=2)
    ckpt = run / "checkpoints" / "step-0000002"
    for name in ("optimizer.pt", "scheduler.pt", "rng-rank0.pt"):
        torch.load(ckpt / name, weights_only=True)  # plain tensors and values only
    # A tampered file carrying an object whose unpickling would run code is refused.
    torch.save({"state": {}, "param_groups": [], "payload": _Evil()}, ckpt / "optimizer.pt")
    with pytest.raises(UserError, match="does not unpickle"):
        train(recipe, run, progress=False)
    assert not _Evil.ran


class _Evil:
    ran = False

    def __reduce__(self):
        return (_Evil._run, ())

    @staticmethod
    def _run():
        _Evil.ran = True


def test_a_stop_request_checkpoints_the_current_step_and_resumes_exactly(sample_prep, train_env):
    """SIGUSR1 (what Slurm sends before the time limit) mid-run, with no periodic checkpoints:
    the trainer finishes its step, checkpoints it and stops; the rerun resumes there and ends
    with the adapter an uninterrupted run gives, bit for bit."""
    import os
    import signal
    import threading
    import time

    import torch

    from pipeline.training.run_folder import PREEMPTED
    from pipeline.train import train

    recipe = _recipe(sample_prep, "training.max_steps=40", "training.log_every=1", "lora.dropout=0.1")
    assert recipe.training.save_every == 0
    whole = train_env / "whole"
    train(recipe, whole, progress=False)

    run = train_env / "run"
    signalled = threading.Event()

    def signal_at_step_3():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                os.kill(os.getpid(), signal.SIGUSR1)
                signalled.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=signal_at_step_3)
    watcher.start()
    outcome = train(recipe, run, progress=False)
    watcher.join()
    assert signalled.is_set() and outcome.preempted == "SIGUSR1"
    stopped_at = int((run / PREEMPTED).read_text().split()[3])
    assert 3 <= stopped_at < 40 and not (run / "DONE").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{stopped_at:07d}"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers given back

    train(recipe, run, progress=False)
    assert (run / "DONE").exists() and not (run / PREEMPTED).exists()
    a, b = _adapter(whole), _adapter(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
