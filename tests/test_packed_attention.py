"""`countrytune_varlen` attention (pipeline/training/attention.py): documents kept apart by their
boundaries. On the CPU it runs its reference (SDPA with the block-diagonal causal mask from the
same boundaries); torch's varlen FlashAttention is checked against it on a GPU by
bench/gpu_check.py. Here: the boundaries, and that a model on it gives HF's own SDPA numbers on
packed rows, padded batches and generation."""

from __future__ import annotations

import copy

import torch

from pipeline.training.attention import VARLEN, packed_kwargs, register


def test_boundaries_come_from_positions_restarting_at_zero():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    got = packed_kwargs(pos)
    assert got["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["max_length_q"] == 4
    # a row that continues a document (no 0 at its start) still opens a sequence there, and
    # never joins the last document of the row before it
    assert packed_kwargs(torch.tensor([[5, 6, 0, 1]]))["cu_seq_lens_q"].tolist() == [0, 2, 4]
    assert packed_kwargs(torch.tensor([[0, 1, 2], [3, 4, 5]]))["cu_seq_lens_q"].tolist() == [0, 3, 6]


def _models():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    sdpa = LlamaForCausalLM(config).eval()
    varlen = copy.deepcopy(sdpa)
    varlen.config._attn_implementation = register()
    return sdpa, varlen


def test_packed_rows_give_sdpa_loss_and_gradients():
    from pipeline.training.loss import TokenLossModel

    sdpa, varlen = _models()
    assert varlen.config._attn_implementation == VARLEN
    ids = torch.randint(0, 211, (2, 40), generator=torch.Generator().manual_seed(1))
    pos = torch.cat([torch.arange(13), torch.arange(20), torch.arange(7)]).repeat(2, 1)
    batch = {"input_ids": ids, "labels": ids, "position_ids": pos}
    want_model, got_model = TokenLossModel(sdpa, None), TokenLossModel(varlen, None)
    want, got = want_model(**batch), got_model(**batch)
    want.backward(), got.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    for (_, g), (_, w) in zip(varlen.named_parameters(), sdpa.named_parameters(), strict=True):
        torch.testing.assert_close(g.grad, w.grad, rtol=1e-5, atol=1e-6)
    # negative control: the same rows read as one document per row give another loss
    whole = {**batch, "position_ids": torch.arange(40).repeat(2, 1)}
    assert abs(got_model(**whole).item() - got.item()) > 1e-3


def test_without_boundaries_it_is_hf_sdpa_padded_batches_and_generation_included():
    sdpa, varlen = _models()
    ids = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding, as lm-eval batches it
    with torch.no_grad():
        torch.testing.assert_close(varlen(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)
        out_v = varlen.generate(ids[:1], max_new_tokens=5, do_sample=False)
        out_s = sdpa.generate(ids[:1], max_new_tokens=5, do_sample=False)
    assert out_v.tolist() == out_s.tolist()


def test_auto_takes_varlen_only_where_it_runs():
    from pipeline.training.model import attn_implementation
    from countrytune.artifacts.recipe import ModelSpec

    auto = ModelSpec(name_or_path="x")
    assert attn_implementation(auto, on_gpu=False) == "sdpa"
    assert attn_implementation(auto, on_gpu=True, dtype=torch.float32) == "sdpa"  # flash needs half
    assert attn_implementation(ModelSpec(name_or_path="x", attn_implementation="varlen"), False) == VARLEN


def test_the_train_path_gives_the_same_losses_on_either_attention(sample_prep, train_env, capsys):
    import json

    from pipeline.train import train
    from tests.test_train import _recipe

    curves = {}
    for attn in ("varlen", "sdpa"):
        run = train_env / attn
        train(_recipe(sample_prep, f"model.attn_implementation={attn}", "training.log_every=1"), run,
              progress=False)
        curves[attn] = [json.loads(x)["train/loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                        if "train/loss" in x]
    assert "attention countrytune_varlen" in capsys.readouterr().err
    assert len(curves["varlen"]) == 4
    torch.testing.assert_close(torch.tensor(curves["varlen"]), torch.tensor(curves["sdpa"]), rtol=1e-5, atol=0)
