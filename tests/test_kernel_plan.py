"""Which kernels run fused is decided for the device the model trains on, once for all of them
(the fused cross-entropy included), and every fallback is said out loud and recorded."""

from __future__ import annotations

import json

import pytest

from countrytune.errors import UserError
from pipeline.kernels import KernelsConfig, plan_kernels

ALL_ON = dict(rms_norm=True, rope=True, swiglu=True, fused_linear_cross_entropy=True, lora=True)


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pytest.importorskip("triton")
    pytest.importorskip("liger_kernel")


def test_a_model_loaded_on_the_cpu_for_a_gpu_run_gets_the_fused_kernels():
    # The trainer loads weights on the CPU and accelerate moves them afterwards: deciding by
    # where the weights are at patch time turned every kernel off on 1-GPU and DDP runs.
    plan = plan_kernels(KernelsConfig(**ALL_ON), "cuda")
    assert set(plan.choices.values()) == {"triton"} and plan.ce_implementation == "triton"
    assert set(plan.summary().values()) == {"fused"}


def test_cpu_training_falls_back_for_every_kernel_with_the_reason():
    plan = plan_kernels(KernelsConfig(**ALL_ON), "cpu")
    assert set(plan.choices.values()) == {"reference"} and plan.ce_implementation is None
    assert all("trains on cpu" in why for why in plan.reasons.values())
    with pytest.raises(UserError, match="implementation 'triton'.*trains on cpu"):
        plan_kernels(KernelsConfig(**ALL_ON, implementation="triton"), "cpu")


def test_without_liger_its_kernels_and_the_fused_loss_agree_on_the_reference(monkeypatch):
    import pipeline.kernels as kernels

    monkeypatch.setattr(kernels, "liger_problem", lambda: "liger-kernel is not installed")
    plan = plan_kernels(KernelsConfig(**ALL_ON), "cuda")
    assert plan.choices["lora"] == "triton"  # ours needs only Triton
    assert {plan.choices[k] for k in ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy")} == {"reference"}
    assert plan.ce_implementation is None  # the loss does not reach for Liger at the first step
    with pytest.raises(UserError, match="liger-kernel is not installed"):
        plan_kernels(KernelsConfig(rms_norm=True, implementation="triton"), "cuda")


def test_the_train_path_logs_and_records_each_fallback(sample_prep, train_env, capsys):
    from pipeline.train import train
    from tests.test_train import _recipe

    run = train_env / "run"
    train(_recipe(sample_prep, "kernels={rms_norm: true, fused_linear_cross_entropy: true}"), run,
          progress=False)
    err = capsys.readouterr().err
    assert "kernels: FALLBACK rms_norm: PyTorch reference (the model trains on cpu" in err
    recorded = json.loads((run / "run.json").read_text())["kernels"]
    assert set(recorded) == {"rms_norm", "fused_linear_cross_entropy"}
    assert all(v.startswith("reference: the model trains on cpu") for v in recorded.values())
