"""`gradient_checkpointing: auto` recomputes only the layers memory needs, measured, and the
choice changes no number."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.training.activation_memory import (
    GIB,
    ActivationEstimate,
    estimate_activations,
    layers_to_recompute,
)


def test_the_fewest_layers_that_fit_are_recomputed():
    est = ActivationEstimate(layers=8, per_layer_bytes=10.0, outside_bytes=4.0, layer_input_bytes=1.0)
    assert est.needed(0) == 6 + 80
    assert layers_to_recompute(est, 1e9) == 0
    # each recomputed layer saves 9, and the first costs a layer's transient (10)
    assert est.needed(3) == 6 + 50 + 3 + 10
    assert layers_to_recompute(est, est.needed(3)) == 3
    assert layers_to_recompute(est, est.needed(3) - 0.5) == 4
    assert layers_to_recompute(est, 1.0) == 8  # nothing fits: recompute all


def _loss_model(lora_dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.training.loss import TokenLossModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear",
                                                                lora_dropout=lora_dropout))
    return TokenLossModel(model, None).train()


@pytest.fixture
def loss_model():
    return _loss_model()


def _batch(rows: int, length: int) -> dict:
    ids = torch.randint(0, 500, (rows, length), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(length // 2), torch.arange(length - length // 2)]).repeat(rows, 1)
    return {"input_ids": ids, "labels": ids, "position_ids": pos}


def test_a_short_probe_predicts_the_saved_activations_of_the_real_batch(loss_model):
    # Probe 32 and 64 tokens of one row; the same count at the real size (4 rows x 512) must
    # agree within 10%. On the CPU, SDPA with the packed rows' dense mask runs the math kernel,
    # which keeps the attention matrix (T^2): a probe that scaled linearly missed a third.
    from pipeline.training.activation_memory import _saved_bytes

    est = estimate_activations(loss_model, _batch(4, 512), micro_batch=4, sequence_length=512,
                               probe_length=64)
    inside, outside = _saved_bytes(loss_model, _batch(4, 512))
    assert est.layers == 3
    assert est.per_layer_bytes * 3 == pytest.approx(inside, rel=0.10)
    assert est.per_layer_bytes * 3 + est.outside_bytes == pytest.approx(inside + outside, rel=0.10)
    assert est.layer_input_bytes == 4 * 512 * 64 * 4
    # negative control: a probe that undercounted by a layer would be caught
    assert est.per_layer_bytes * 2 < inside * 0.9


def test_the_probe_leaves_the_random_generator_where_it_was():
    # With LoRA dropout the probe's forward draws random numbers; a run that probed must train
    # on the masks a run that did not would (a ZeRO-2 run drifted from ZeRO-3's when it did).
    model = _loss_model(lora_dropout=0.1)
    before = torch.get_rng_state()
    model(**_batch(1, 16))
    assert not torch.equal(torch.get_rng_state(), before)  # the forward itself does draw
    before = torch.get_rng_state()
    estimate_activations(model, _batch(1, 512), micro_batch=1, sequence_length=512, probe_length=64)
    assert torch.equal(torch.get_rng_state(), before)


def test_recomputation_is_chosen_from_the_budget_and_changes_no_loss(sample_prep, train_env):
    from pipeline.train import train
    from tests.test_train import _recipe

    def run(name, *overrides):
        out = train_env / name
        train(_recipe(sample_prep, "model.tiny.num_layers=4", "training.log_every=1",
                      "training.max_steps=3", *overrides), out, progress=False)
        losses = [json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
                  if "train/loss" in x]
        return losses

    plenty = run("auto-plenty")
    full = run("full", "training.gradient_checkpointing=true")
    # well under the ~1 MiB these activations take: some or all layers recomputed
    squeezed = run("auto-squeezed", "training.activation_memory_gib=0.0003")
    assert len(plenty) == 3 and plenty == full == squeezed  # recomputation changes no number


def test_the_train_log_says_what_auto_chose(sample_prep, train_env, capsys):
    from pipeline.train import train
    from tests.test_train import _recipe

    def chosen(name, *overrides):
        train(_recipe(sample_prep, "model.tiny.num_layers=4", "training.max_steps=1", *overrides),
              train_env / name, progress=False)
        return next(x for x in capsys.readouterr().err.splitlines() if "activation checkpointing auto" in x)

    line = chosen("plenty")
    assert "recompute 0 of 4 layers (none)" in line and "free on cpu" in line
    needed_mib = float(line.split("auto: ")[1].split(" MiB")[0])
    line = chosen("squeezed", f"training.activation_memory_gib={needed_mib * 0.7 / 1024}")
    recomputed = int(line.split("recompute ")[1].split(" of")[0])
    assert 0 < recomputed < 4, line
    assert "allowed (training.activation_memory_gib)" in line
