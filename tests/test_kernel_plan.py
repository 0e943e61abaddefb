"""Which kernels run fused is decided for the device the model trains on, once for all of them
(the fused cross-entropy included); `auto` takes only what the decision table measured faster
there, and every fallback is said out loud and recorded."""

from __future__ import annotations

import json

import pytest

from countrytune.errors import UserError
from pipeline.training.kernels import KernelsConfig, plan_kernels
from pipeline.training.kernels.decisions import auto_choice, device_class, read_table

ALL_ON = dict(rms_norm=True, rope=True, swiglu=True, fused_linear_cross_entropy=True, lora=True)


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pytest.importorskip("triton")
    pytest.importorskip("liger_kernel")


def test_explicit_triton_for_a_model_loaded_on_the_cpu_for_a_gpu_run_is_fused():
    # The trainer loads weights on the CPU and accelerate moves them afterwards: deciding by
    # where the weights are at patch time turned every kernel off on 1-GPU and DDP runs.
    plan = plan_kernels(KernelsConfig(**ALL_ON, implementation="triton"), "cuda", "NVIDIA H200")
    assert set(plan.choices.values()) == {"triton"} and plan.ce_implementation == "triton"
    assert set(plan.summary().values()) == {"fused"}


def test_auto_on_the_h200_runs_nothing_that_measured_slower():
    # Issue 23's measurements: every Triton kernel was slower than its reference on an H200.
    plan = plan_kernels(KernelsConfig(**ALL_ON), "cuda", "NVIDIA H200")
    assert set(plan.choices.values()) == {"reference"} and plan.ce_implementation is None
    assert plan.reasons["lora"] == "not measured faster than the reference on NVIDIA H200 (triton 0.83x)"


def test_auto_on_an_unmeasured_gpu_runs_the_reference_and_says_so():
    plan = plan_kernels(KernelsConfig(**ALL_ON), "cuda", "NVIDIA A100-SXM4-80GB")
    assert set(plan.choices.values()) == {"reference"}
    assert all(why.startswith("not measured on NVIDIA A100") for why in plan.reasons.values())


def test_auto_takes_the_fastest_implementation_measured_faster(tmp_path):
    table = tmp_path / "t.yaml"
    table.write_text("- device: {type: cuda, name_contains: H100}\n  source: a run\n"
                     "  kernels:\n    lora: {triton: 1.05, torch: 1.21}\n    rope: {triton: 1.03}\n")
    rows = read_table(table)
    h100 = device_class("cuda", "NVIDIA H100 80GB HBM3")
    assert auto_choice("lora", h100, rows) == ("torch", "measured 1.21x the reference on NVIDIA H100 80GB HBM3")
    assert auto_choice("rope", h100, rows)[0] == "reference"  # 3% is within run-to-run noise
    assert auto_choice("swiglu", h100, rows)[0] == "reference"  # no number: reference
    assert auto_choice("lora", device_class("cuda", "NVIDIA H200"), rows)[0] == "reference"


@pytest.mark.parametrize("row,message", [
    ("- device: {type: cuda}\n  kernels: {lora: {triton: 1.2}}\n", "needs device.type"),
    ("- device: {type: cuda}\n  source: x\n  kernels: {lora: {cublas: 1.2}}\n", "no implementation 'cublas'"),
    ("- device: {type: cuda}\n  source: x\n  kernels: {rope: {torch: 1.2}}\n", "no implementation 'torch'"),
    ("- device: {type: cuda}\n  source: x\n  kernels: {lora: {triton: fast}}\n", "needs a measured speed"),
])
def test_a_table_row_without_its_numbers_is_refused(tmp_path, row, message):
    (tmp_path / "t.yaml").write_text(row)
    with pytest.raises(ValueError, match=message):
        read_table(tmp_path / "t.yaml")


def test_the_shipped_table_reads_and_backs_every_cpu_choice_with_a_number():
    rows = read_table()
    assert any(r.device_type == "cpu" for r in rows) and all(r.source.strip() for r in rows)
    for row in rows:
        for kernel, measured in row.speeds.items():
            assert measured and all(v >= 0 for v in measured.values()), (row, kernel)


def test_cpu_training_runs_no_triton_kernel_and_an_explicit_one_is_refused():
    plan = plan_kernels(KernelsConfig(**ALL_ON), "cpu")
    assert plan.ce_implementation is None
    assert {plan.choices[k] for k in ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy")} == {"reference"}
    assert plan.reasons["rope"].startswith("not measured on cpu")
    with pytest.raises(UserError, match="kernels.lora with implementation 'triton'.*trains on cpu"):
        plan_kernels(KernelsConfig(lora=True, choose={"lora": "triton"}), "cpu")
    with pytest.raises(UserError, match="implementation 'triton'.*trains on cpu"):
        plan_kernels(KernelsConfig(**ALL_ON, implementation="triton"), "cpu")


def test_the_torch_fused_lora_runs_anywhere_when_chosen():
    plan = plan_kernels(KernelsConfig(lora=True, choose={"lora": "torch"}), "cpu")
    assert plan.choices == {"lora": "torch"} and plan.summary() == {"lora": "fused (torch)"}


def test_choose_is_checked_against_each_kernels_implementations():
    with pytest.raises(ValueError, match="'torch' is not one of its implementations"):
        KernelsConfig(rope=True, choose={"rope": "torch"})
    with pytest.raises(ValueError, match="kernels.lora is off"):
        KernelsConfig(choose={"lora": "torch"})


def test_without_liger_its_kernels_and_the_fused_loss_agree_on_the_reference(monkeypatch):
    import pipeline.training.kernels as kernels

    monkeypatch.setattr(kernels, "liger_problem", lambda: "liger-kernel is not installed")
    plan = plan_kernels(KernelsConfig(lora=True, implementation="triton"), "cuda", "H200")
    assert plan.choices["lora"] == "triton"  # ours needs only Triton
    with pytest.raises(UserError, match="liger-kernel is not installed"):
        plan_kernels(KernelsConfig(rms_norm=True, implementation="triton"), "cuda")


def test_the_train_path_logs_and_records_each_fallback(sample_prep, train_env, capsys):
    from pipeline.train import train
    from tests.test_train import _recipe

    run = train_env / "run"
    train(_recipe(sample_prep, "kernels={rms_norm: true, fused_linear_cross_entropy: true}"), run,
          progress=False)
    err = capsys.readouterr().err
    assert "kernels: FALLBACK rms_norm: PyTorch reference (not measured on cpu" in err
    recorded = json.loads((run / "run.json").read_text())["kernels"]
    assert set(recorded) == {"rms_norm", "fused_linear_cross_entropy"}
    assert all(v.startswith("reference: not measured on cpu") for v in recorded.values())
