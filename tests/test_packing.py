"""Packing keeps documents apart; language mixing follows the recipe; the row schedule is
deterministic and independent of how a step is split into micro-batches."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.training.packing import (
    IGNORE_INDEX,
    RowSchedule,
    TokenizedDocs,
    eval_rows_for_rank,
    language_shares,
    mixed_order,
    mixture_shares,
    pack_rows,
)


def _docs(lengths, langs, vocab=97, seed=0, targets=None):
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(3, vocab, n).astype(np.int32) for n in lengths]
    names = tuple(sorted(set(langs)))
    masks = targets or [np.ones(n, bool) for n in lengths]
    return TokenizedDocs(np.concatenate(tokens), np.concatenate(masks),
                         np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                         np.asarray([names.index(x) for x in langs], np.int16), names)


def _tiny_llama(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def _loss_sum(model, rows):
    logits = model(input_ids=rows.input_ids, position_ids=rows.position_ids, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).double(), rows.labels.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(attn):
    # Five documents of odd lengths packed into rows of 64 (no splitting, so every document
    # is whole in one row) against each document alone in its own row.
    docs = _docs([17, 30, 9, 41, 23], ["ind"] * 5)
    order = np.arange(5)
    model = _tiny_llama(attn)
    packed = pack_rows(docs, order, 64, pad_id=0, packing=True, split_documents=False)
    alone = pack_rows(docs, order, 64, pad_id=0, packing=False, split_documents=False)
    assert len(packed) < len(alone) == 5
    assert (packed.labels != IGNORE_INDEX).sum() == (alone.labels != IGNORE_INDEX).sum()
    with torch.no_grad():
        # fp32 forward, sums in fp64: the two layouts differ only in summation order inside
        # attention (padded keys vs. block-masked neighbours), ~1e-6 relative.
        torch.testing.assert_close(_loss_sum(model, packed), _loss_sum(model, alone),
                                   rtol=1e-5, atol=1e-4)
    # And the mask matters: the same packed rows with positions NOT reset attend across
    # documents and give a different loss.
    leaky = type(packed)(packed.input_ids, packed.labels,
                         torch.arange(64).expand_as(packed.position_ids).clone())
    with torch.no_grad():
        assert abs(_loss_sum(model, leaky) - _loss_sum(model, packed)) > 1e-2


def test_labels_never_cross_documents():
    docs = _docs([5, 7, 4], ["ind"] * 3)
    rows = pack_rows(docs, np.arange(3), 10, pad_id=0, packing=True, split_documents=True)
    flat_ids, flat_labels = rows.input_ids.flatten(), rows.labels.flatten()
    # Document ends (positions 4, 11, 15 of the stream) predict nothing.
    assert flat_labels[4] == IGNORE_INDEX and flat_labels[11] == IGNORE_INDEX
    assert flat_labels[15] == IGNORE_INDEX
    # Inside a document, labels are the next token.
    assert flat_labels[0] == flat_ids[1] and flat_labels[5] == flat_ids[6]
    # A document crossing the row boundary continues in the next row with positions reset.
    assert rows.position_ids[1, 0] == 0
    # Every token of every document appears once: 16 tokens, 2 rows of 10.
    assert rows.input_ids.shape == (2, 10)


def test_sft_targets_only_masked_tokens():
    mask = [np.array([0, 0, 1, 1, 0, 1], bool)]
    docs = _docs([6], ["ind"], targets=mask)
    rows = pack_rows(docs, np.arange(1), 8, pad_id=0, packing=True, split_documents=False)
    ids, labels = rows.input_ids[0], rows.labels[0]
    expected = [IGNORE_INDEX, int(ids[2]), int(ids[3]), IGNORE_INDEX, int(ids[5]), IGNORE_INDEX,
                IGNORE_INDEX, IGNORE_INDEX]
    assert labels.tolist() == expected


def test_language_shares_weights_and_temperature():
    counts = {"ind": 900, "jav": 90, "sun": 10}
    natural = language_shares(counts, None, 1.0)
    assert natural["ind"] == pytest.approx(0.9)
    flat = language_shares(counts, None, 5.0)
    assert flat["sun"] > natural["sun"] * 5
    weighted = language_shares(counts, {"ind": 1, "jav": 1, "ace": 3}, 1.0)
    assert weighted == {"ind": 0.5, "jav": 0.5}  # ace has no documents: left out, renormalised


def test_mixed_order_upsamples_small_languages_without_early_repeats():
    docs = _docs([3] * 110, ["ind"] * 100 + ["sun"] * 10)
    shares = {"ind": 0.5, "sun": 0.5}
    order = mixed_order(docs, shares, seed=1)
    sun = [i for i in order if i >= 100]
    assert len(sun) == 55 and set(sun) == set(range(100, 110))
    assert max(np.bincount(sun)[100:]) - min(np.bincount(sun)[100:]) <= 1
    assert (order == mixed_order(docs, shares, seed=1)).all()


def test_source_weights_split_the_draw_then_languages_split_each_source():
    import dataclasses

    docs = dataclasses.replace(_docs([3] * 130, ["jav"] * 100 + ["jav"] * 20 + ["eng"] * 10),
                               sources=np.asarray([0] * 100 + [1] * 20 + [2] * 10, dtype=np.int16))
    _, shares = mixture_shares(docs, [1.0, 1.0, 0.5], None, 1.0)
    assert shares == pytest.approx({(0, "jav"): 0.4, (1, "jav"): 0.4, (2, "eng"): 0.2})
    order = mixed_order(docs, shares, seed=0)
    drawn = np.bincount(docs.sources[order], minlength=3)
    assert list(drawn) == [52, 52, 26]  # 130 documents a pass, 40/40/20%: the small source repeats
    # language weights apply within each source
    _, only_eng = mixture_shares(docs, [1.0, 1.0, 0.5], {"eng": 1}, 1.0)
    assert only_eng == {(2, "eng"): 1.0}


def test_row_schedule_same_rows_whatever_the_split():
    docs = _docs([40] * 30, ["ind"] * 30)
    rows = pack_rows(docs, np.arange(30), 32, pad_id=0, packing=True, split_documents=True)
    one_by_eight = RowSchedule(rows, micro_batch=8, accumulation=1, world_size=1, seed=3)
    eight_by_one = RowSchedule(rows, micro_batch=1, accumulation=8, world_size=1, seed=3)
    two_ranks = RowSchedule(rows, micro_batch=2, accumulation=2, world_size=2, seed=3)
    for step in (0, 5):  # step 5 crosses into the second epoch (38 rows)
        a = one_by_eight.micro_batch_at(step, 0, 0)["input_ids"]
        b = torch.cat([eight_by_one.micro_batch_at(step, m, 0)["input_ids"] for m in range(8)])
        c = torch.cat([two_ranks.micro_batch_at(step, m, r)["input_ids"]
                       for m in range(2) for r in range(2)])
        assert torch.equal(a, b) and torch.equal(a, c)


def test_eval_rows_padded_evenly_across_ranks():
    docs = _docs([20] * 5, ["ind"] * 5)
    rows = pack_rows(docs, np.arange(5), 20, pad_id=0, packing=False, split_documents=False)
    per_rank = [eval_rows_for_rank(rows, 2, r, 2, pad_id=0) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    targets = sum(int((b["labels"] != IGNORE_INDEX).sum()) for batches in per_rank for b in batches)
    assert targets == int((rows.labels != IGNORE_INDEX).sum())


def _copying_pack(docs, order, length, pad_id, packing, split_documents):
    """The packer as it was before rows became lazy: every row built by copying tokens."""
    rows, ids, lab, pos, fill = [], None, None, None, 0

    def new_row():
        return np.full(length, pad_id), np.full(length, IGNORE_INDEX), np.zeros(length, np.int64)

    ids, lab, pos = new_row()
    for d in order:
        tokens, targets = docs.doc(int(d))
        labels = np.full(len(tokens), IGNORE_INDEX)
        labels[:-1] = np.where(targets[1:], tokens[1:], IGNORE_INDEX)
        if not (packing and split_documents):
            tokens, labels = tokens[:length], labels[:length]
            if (not packing or fill + len(tokens) > length) and fill:
                pos[fill:] = np.arange(length - fill)
                rows.append((ids, lab, pos))
                (ids, lab, pos), fill = new_row(), 0
        start = 0
        while start < len(tokens):
            take = min(len(tokens) - start, length - fill)
            ids[fill:fill + take], lab[fill:fill + take] = tokens[start:start + take], labels[start:start + take]
            pos[fill:fill + take] = np.arange(take)
            fill, start = fill + take, start + take
            if fill == length:
                rows.append((ids, lab, pos))
                (ids, lab, pos), fill = new_row(), 0
    if fill:
        pos[fill:] = np.arange(length - fill)
        rows.append((ids, lab, pos))
    return rows


@pytest.mark.parametrize("packing, split", [(True, True), (True, False), (False, False)])
def test_lazy_rows_equal_rows_built_by_copying(packing, split):
    from pipeline.training.packing import layout_rows

    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 70, 40).tolist()
    targets = [rng.random(n) < 0.7 for n in lengths]  # SFT-like masks, holes included
    docs = _docs(lengths, ["jav"] * 40, targets=targets)
    order = rng.permutation(40)
    lazy = layout_rows(docs, order, 32, pad_id=1, packing=packing, split_documents=split)
    want = _copying_pack(docs, order, 32, 1, packing, split)
    assert len(lazy) == len(want)
    for r in rng.permutation(len(want))[:25]:  # any row, in any order, on demand
        for got, expected in zip(lazy.row(int(r)), want[r]):
            np.testing.assert_array_equal(got, expected)
