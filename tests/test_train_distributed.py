"""Two real processes on CPU over gloo, launched the way training teams launch: `accelerate
launch -m pipeline.train`. DDP end to end with exact resume; DeepSpeed ZeRO-2 and ZeRO-3
adapters that hold the real trained weights, and exact resume under ZeRO-3 (preference
tuning too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "id" / "tiny-cpu.yaml"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def _launch(prep: Path, out: Path, cache: Path, *extra: str,
            entry: tuple[str, ...] = ("-m", "pipeline.train")) -> str:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
               COUNTRYTUNE_CACHE=str(cache),
               # DeepSpeed JIT-compiles its CPU ops once (~40 s); keep them between runs.
               TORCH_EXTENSIONS_DIR=str(Path.home() / ".cache" / "countrytune" / "torch_extensions"))
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *entry, str(TINY), "--output", str(out), "--no-progress",
           "--set", f"data.sources=[{{path: {prep}}}]", "--set", "training.max_steps=6",
           "--set", "training.save_every=3", "--set", "training.eval_every=0",
           "--set", "training.sequence_length=128", "--set", "tokenizer.train_vocab_size=500",
           "--set", "lora.dropout=0.1", *extra]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stderr


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.fixture
def clean_shm():
    yield
    for f in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"):
        f.unlink(missing_ok=True)


def _model(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def _assert_resumed_equal(prep, tmp_path, *extra, weights=_adapter):
    full = tmp_path / "full"
    _launch(prep, full, tmp_path / "cache", *extra)
    split = tmp_path / "split"
    log = _launch(prep, split, tmp_path / "cache", "--stop-after", "3", *extra)
    assert "stopping after step 3" in log and not (split / "DONE").exists()
    log = _launch(prep, split, tmp_path / "cache", *extra)
    assert "resuming from checkpoint" in log and "(step 3)" in log
    a, b = weights(full), weights(split)
    assert a.keys() == b.keys()
    for k in a:
        # Bit-identical: the rows of each step come from the step number, every RNG (dropout
        # included) is restored per process, and gloo's CPU reductions are deterministic.
        assert torch.equal(a[k], b[k]), k
    return a


def _suite(tmp_path: Path) -> list[str]:
    """Recipe overrides turning on held-out scoring of a few sentences no run trains on."""
    from tests.export_fixtures import SENTENCES

    text = tmp_path / "heldout.jsonl"
    text.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES), encoding="utf-8")
    suite = tmp_path / "heldout.yaml"
    suite.write_text(json.dumps({"country": "id", "text": {"jav": [str(text)]}}), encoding="utf-8")
    return ["--set", f"evaluation.suite={suite}", "--set", "evaluation.before_and_after=true"]


def test_ddp_two_processes_resume_exactly(sample_prep, tmp_path):
    adapter = _assert_resumed_equal(sample_prep, tmp_path, *_suite(tmp_path))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    # Held-out scoring ran on the main process while the other waited, and the resumed run
    # reused the base scores of its first attempt: both runs report the same table.
    full, split = (json.loads((tmp_path / d / "run.json").read_text())["heldout_eval"] for d in ("full", "split"))
    assert full == split and full["bits_per_byte"]["jav"]["adapter"] != full["bits_per_byte"]["jav"]["base"]


def test_zero3_adapter_is_real_and_matches_zero2(sample_prep, tmp_path, clean_shm):
    # Exact resume under ZeRO-3 is test_faults.py's: runs killed at random steps end bit-identical.
    _launch(sample_prep, tmp_path / "zero3", tmp_path / "cache", "--set", "deepspeed.stage=3", *_suite(tmp_path))
    zero3 = _adapter(tmp_path / "zero3")
    assert json.loads((tmp_path / "zero3" / "run.json").read_text())["heldout_eval"] is None
    _launch(sample_prep, tmp_path / "zero2", tmp_path / "cache", "--set", "deepspeed.stage=2")
    zero2 = _adapter(tmp_path / "zero2")
    assert zero3.keys() == zero2.keys() and zero3
    for k in zero3:
        assert zero3[k].numel() > 0 and zero3[k].shape == zero2[k].shape, k
        # Same data, same seeds; ZeRO-2 and -3 reduce gradients in differently sized buckets,
        # so sums differ in the last bits (~1e-7 relative) over 6 Adam steps.
        torch.testing.assert_close(zero3[k], zero2[k], rtol=1e-4, atol=1e-6)
    trained = [k for k in zero3 if "lora_B" in k]
    assert trained and all(zero3[k].abs().sum() > 0 for k in trained), "B moved from zero init"


def test_zero3_full_parameter_run_with_optimizer_offload_resumes_exactly(sample_prep, tmp_path, clean_shm):
    """method: full under 2-process ZeRO-3 with the optimiser state in CPU memory
    (DeepSpeedCPUAdam): every weight is partitioned and trained, the saved model is gathered
    whole, and a run split at a checkpoint ends bit-identical to an uninterrupted one."""
    full = ("--set", "method=full", "--set", "deepspeed={stage: 3, offload_optimizer: true}")
    trained = _assert_resumed_equal(sample_prep, tmp_path, *full, weights=_model)
    log = (tmp_path / "full" / "run.json").read_text()
    assert json.loads(log)["method"] == "full"
    base = _model_from_base(tmp_path / "full")
    assert trained.keys() == base.keys() and all(v.numel() for v in trained.values())
    assert all(not torch.equal(trained[k], base[k]) for k in trained), "every weight trained"


def test_dpo_from_an_adapter_under_zero3_resumes_exactly_and_matches_zero2(tmp_path, clean_shm):
    """task: dpo on preference pairs under 2-process ZeRO-3, starting from an earlier adapter
    (lora.init_from): the reference is that adapter's frozen copy on the partitioned base,
    switched in inside the same forward, so step 1 sees every margin at 0; a run split at a
    checkpoint ends bit-identical to an uninterrupted one, the pairs are scored, not skipped,
    and the same run under ZeRO-2 (whole base on each process) trains the same adapter."""
    from tests.preference_fixtures import hand_written_pairs

    pairs = hand_written_pairs(tmp_path / "pairs")
    # No LoRA dropout: the reference has none, and step 1's margins must then be exactly 0
    # (resume restoring the dropout RNG is the DDP test's).
    dpo = ("--set", "task=dpo", "--set", "data.eval_fraction=0.2", "--set", "training.log_every=1",
           "--set", "optim.lr=1e-2", "--set", "lora.dropout=0")
    _launch(pairs, tmp_path / "start", tmp_path / "cache", *dpo, "--set", "deepspeed.stage=2")
    dpo += ("--set", f"lora.init_from={tmp_path / 'start' / 'adapter'}")
    adapter = _assert_resumed_equal(pairs, tmp_path, *dpo, "--set", "deepspeed.stage=3")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    record = json.loads((tmp_path / "split" / "run.json").read_text())
    assert record["task"] == "dpo" and record["preference"]["beta"] == 0.1
    assert "started from" in record["preference"]["reference"]
    assert sum(e["pairs"] for e in record["eval"].values()) >= 2
    logged = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in x]
    assert len(logged) == 6 and all(0 <= m["train/reward_accuracy"] <= 1 for m in logged)
    assert logged[0]["train/reward_margin"] == pytest.approx(0, abs=1e-6) and logged[-1]["train/reward_margin"] > 0
    _launch(pairs, tmp_path / "zero2", tmp_path / "cache", *dpo, "--set", "deepspeed.stage=2")
    zero2 = _adapter(tmp_path / "zero2")
    assert zero2.keys() == adapter.keys()
    for k in adapter:  # partitioned and whole reductions sum in different orders, which six
        # steps at lr 1e-2 grow to ~1e-6 in entries of ~1e-2
        torch.testing.assert_close(zero2[k], adapter[k], rtol=1e-4, atol=1e-5)


def _model_from_base(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "base_model" / "model.safetensors")


KERNELS_ON = "{rms_norm: true, rope: true, swiglu: true, fused_linear_cross_entropy: true, lora: true}"


def test_zero3_with_every_kernel_matches_the_reference(sample_prep, tmp_path, clean_shm):
    """All fused kernels (Liger's and our LoRA projections, run by Triton's interpreter) under
    2-process ZeRO-3, where the fused ops read partitioned weights, against the same run on
    the PyTorch reference path."""
    pytest.importorskip("triton")
    pytest.importorskip("liger_kernel")
    small = ("--set", "training.max_steps=2", "--set", "training.save_every=0",
             "--set", "training.sequence_length=64", "--set", "tokenizer.train_vocab_size=400",
             "--set", "model.tiny.hidden_size=32", "--set", "model.tiny.intermediate_size=64",
             "--set", "lora.dropout=0.0", "--set", "deepspeed.stage=3",
             # Each interpreted kernel launch costs ~1 ms per program: keep the work tiny.
             "--set", "training.micro_batch_size=2", "--set", "training.gradient_accumulation_steps=1",
             "--set", "data.eval_max_docs_per_language=1")
    entry = (str(ROOT / "tests" / "interpreted_train.py"),)
    logs = {}
    for impl in ("reference", "triton"):
        kernels = KERNELS_ON[:-1] + f", implementation: {impl}}}"
        logs[impl] = _launch(sample_prep, tmp_path / impl, tmp_path / "cache", *small,
                             "--set", f"kernels={kernels}", entry=entry)
    assert "lora: fused 2 down_proj" in logs["triton"] and "ZeRO-3" in logs["triton"]
    assert "rms_norm: fused" in logs["triton"] and "Liger's chunked kernel" in logs["triton"]
    # The real train path engaged every kernel, and recorded it (the reference run says why not).
    recorded = json.loads((tmp_path / "triton" / "run.json").read_text())["kernels"]
    assert recorded == {k: "fused" for k in ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy", "lora")}
    assert set(json.loads((tmp_path / "reference" / "run.json").read_text())["kernels"].values()) == {
        "reference: implementation=reference"}
    ref, fused = _adapter(tmp_path / "reference"), _adapter(tmp_path / "triton")
    for k in ref:
        # fp32 kernels vs. PyTorch differ in summation order only (~1e-7 relative per op,
        # measured 1.3e-5 of the largest value after 2 Adam steps, where Adam's division by
        # sqrt(v) magnifies tiny gradient differences in near-zero entries).
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-3, atol=1e-6)


def test_launcher_deepspeed_config_fills_autos_from_the_recipe(sample_prep, tmp_path, clean_shm):
    """The command in launch/README.md: accelerate's ZeRO-2 config and its JSON with "auto"
    values, the recipe without a deepspeed section; the trainer fills the autos."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
               COUNTRYTUNE_CACHE=str(tmp_path / "cache"),
               TORCH_EXTENSIONS_DIR=str(Path.home() / ".cache" / "countrytune" / "torch_extensions"))
    cmd = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "launch/accelerate/zero2.yaml"),
           "--num_processes", "2", "-m", "pipeline.train", str(TINY), "--output",
           str(tmp_path / "run"), "--no-progress", "--set", f"data.sources=[{{path: {sample_prep}}}]",
           "--set", "training.max_steps=2", "--set", "training.sequence_length=64",
           "--set", "tokenizer.train_vocab_size=400"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es) on cpu, DeepSpeed ZeRO-2" in proc.stderr
    assert (tmp_path / "run" / "DONE").exists() and _adapter(tmp_path / "run")


def test_workers_die_with_their_launcher_after_a_checkpoint(sample_prep, tmp_path):
    """kill -9 of `accelerate launch`: its workers, which run in their own sessions, used to
    finish the run on their own. Now the kernel sends them SIGTERM (PR_SET_PDEATHSIG), which
    the trainer treats as a stop request: finish the step, checkpoint, exit."""
    import signal
    import time

    out = tmp_path / "run"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", COUNTRYTUNE_CACHE=str(tmp_path / "cache"))
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pipeline.train", str(TINY),
           "--output", str(out), "--no-progress", "--set", f"data.sources=[{{path: {sample_prep}}}]",
           "--set", "training.max_steps=100000", "--set", "training.log_every=1",
           "--set", "training.sequence_length=64", "--set", "tokenizer.train_vocab_size=400"]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def workers() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and b"pipeline.train" in (proc / "cmdline").read_bytes() \
                        and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher.pid:
                    found.append(int(proc.name))
            except (OSError, ValueError):
                continue
        return found

    pids: list[int] = []
    try:
        deadline = time.monotonic() + 180
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert launcher.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        pids = workers()
        assert len(pids) == 2, pids
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 60
        def alive(pid: int) -> bool:
            try:
                return b"pipeline.train" in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return False

        while any(alive(p) for p in pids):
            assert time.monotonic() < deadline, "workers outlived their launcher"
            time.sleep(0.2)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for p in set(pids) | set(workers()):  # orphans are no longer the launcher's children
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert (out / "PREEMPTED").exists() and list((out / "checkpoints").glob("step-*/COMPLETE"))
