"""`training.compile: true` compiles each decoder layer (regional compilation) and trains the same
numbers as eager: inductor generates other fused code, so equal to ~1e-6, not bit-exact."""

from __future__ import annotations

import json

import torch


def test_compiled_layers_train_the_eager_losses(sample_prep, train_env, capsys):
    from pipeline.train import train
    from tests.test_train import _recipe

    curves = {}
    for compiled in (False, True):
        run = train_env / f"compile-{compiled}"
        train(_recipe(sample_prep, f"training.compile={str(compiled).lower()}", "training.max_steps=2",
                      "training.log_every=1", "model.tiny.num_layers=1"), run, progress=False)
        curves[compiled] = [json.loads(x)["train/loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                            if "train/loss" in x]
    assert "torch.compile: 1 decoder layers (regional)" in capsys.readouterr().err
    torch.testing.assert_close(torch.tensor(curves[True]), torch.tensor(curves[False]), rtol=1e-5, atol=0)
