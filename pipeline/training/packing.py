"""Documents into fixed-length rows: language mixing, packing, and the global row order.

A tokenised document is a token array plus a target mask (which tokens the loss may predict:
all of them for plain text, the assistant's for chat). Labels are aligned per document before
packing (labels[i] = tokens[i+1]), so no document ever predicts its neighbour's first token;
position ids restart at 0 for every document, which is what keeps attention inside a document
(Hugging Face builds a block-diagonal mask from them for SDPA/eager and uses varlen
FlashAttention with them). tests/test_packing.py checks packed loss = unpacked loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedDocs:
    """Documents as one flat token array with offsets (cheap to cache and slice)."""

    tokens: np.ndarray  # int32 [total_tokens]
    targets: np.ndarray  # bool [total_tokens]: this token may be predicted
    offsets: np.ndarray  # int64 [n_docs + 1]
    langs: np.ndarray  # int16 [n_docs]: index into lang_names
    lang_names: tuple[str, ...]
    sources: np.ndarray | None = None  # int16 [n_docs]: index of the recipe's data source
    # Preference pairs (task dpo): documents 2k and 2k+1 are one prompt's chosen and rejected
    # answers; a pair is drawn, counted and laid out whole, named by its chosen document.
    paired: bool = False

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], self.targets[a:b]

    def docs_of(self, lang: str, source: int | None = None) -> np.ndarray:
        """Documents of a language (of one data source, when given)."""
        mask = self.langs == self.lang_names.index(lang)
        if source is not None:
            mask &= self.sources == source
        if self.paired:
            mask[1::2] = False
        return np.flatnonzero(mask)


@dataclass(frozen=True)
class Rows:
    """Fixed-length training rows."""

    input_ids: torch.Tensor  # long [n, L]
    labels: torch.Tensor  # long [n, L], IGNORE_INDEX where nothing is predicted
    position_ids: torch.Tensor  # long [n, L], restarting at 0 per document

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def language_shares(counts: dict[str, int], weights: dict[str, float] | None,
                    temperature: float) -> dict[str, float]:
    """Share of training documents per language.

    Given weights are normalised over the languages that have data; otherwise shares follow
    n^(1/T): T=1 keeps the corpus as it is, T=3 or 5 (the usual multilingual settings) lifts
    small languages by repeating their documents.
    """
    if weights is not None:
        raw = {lang: w for lang, w in weights.items() if w > 0 and counts.get(lang, 0) > 0}
    else:
        raw = {lang: n ** (1.0 / temperature) for lang, n in counts.items() if n > 0}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("no training documents in the languages the recipe asks for")
    return {lang: v / total for lang, v in sorted(raw.items())}


def mixture_shares(docs: TokenizedDocs, source_weights: list[float | None], weights: dict[str, float] | None,
                   temperature: float) -> tuple[dict, dict]:
    """(documents, share of the documents drawn) per language, or per (source, language) when
    the sources are weighted: each source's weight, normalised over the sources that have
    documents, split over its languages as language_shares splits a corpus."""
    if source_weights[0] is None:  # drawn by language across all sources
        counts = {lang: len(docs.docs_of(lang)) for lang in docs.lang_names}
        return counts, language_shares(counts, weights, temperature)
    counts = {(s, lang): n for s in range(len(source_weights)) for lang in docs.lang_names
              if (n := len(docs.docs_of(lang, s)))}
    used = {s: w for s, w in enumerate(source_weights) if any(key[0] == s for key in counts)}
    if not used:
        raise ValueError("no training documents in any source")
    out = {}
    for s, w in used.items():
        try:
            within = language_shares({lang: n for (t, lang), n in counts.items() if t == s}, weights, temperature)
        except ValueError:
            continue  # none of this source's languages is wanted
        out.update({(s, lang): w / sum(used.values()) * share for lang, share in within.items()})
    total = sum(out.values())
    return counts, {key: v / total for key, v in sorted(out.items())}


def mixed_order(docs: TokenizedDocs, shares: dict, seed: int) -> np.ndarray:
    """Document indices for one pass: each language (or (source, language), see
    mixture_shares) drawn to its share, then shuffled.

    The pass has as many documents as the languages used hold together; a language whose
    share exceeds its size repeats whole shuffled passes over its documents before sampling
    the remainder, so no document repeats twice before every one has been used once.
    """
    rng = np.random.default_rng(seed)
    pool = {key: docs.docs_of(key[1], key[0]) if isinstance(key, tuple) else docs.docs_of(key) for key in shares}
    total = sum(len(ix) for ix in pool.values())
    picked = []
    for lang, share in shares.items():
        ix = pool[lang]
        want = max(1, round(share * total))
        reps, rest = divmod(want, len(ix))
        picked.extend(rng.permutation(ix) for _ in range(reps))
        picked.append(rng.permutation(ix)[:rest])
    order = np.concatenate(picked)
    return order[rng.permutation(len(order))]


def _aligned_labels(tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
    labels = np.full(len(tokens), IGNORE_INDEX, dtype=np.int64)
    labels[:-1] = np.where(targets[1:], tokens[1:], IGNORE_INDEX)
    return labels


class PackedRows:
    """Training rows described, not built: each row is a few (document, start, length)
    segments, materialised only when a micro-batch asks for it. The token arrays behind it
    are memory-mapped from the tokenised cache, so a process holds the layout (a few bytes per
    document) and the rows of the current step, not the corpus (issue: memory per rank grew
    with the corpus when every process packed every row into int64 tensors)."""

    def __init__(self, docs: TokenizedDocs, length: int, pad_id: int, seg_doc: np.ndarray,
                 seg_start: np.ndarray, seg_len: np.ndarray, row_ptr: np.ndarray) -> None:
        self.docs, self.length, self.pad_id = docs, length, pad_id
        self.seg_doc, self.seg_start, self.seg_len, self.row_ptr = seg_doc, seg_start, seg_len, row_ptr

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, labels, position_ids) of row r, int64 numpy."""
        length = self.length
        ids = np.full(length, self.pad_id, dtype=np.int64)
        lab = np.full(length, IGNORE_INDEX, dtype=np.int64)
        pos = np.zeros(length, dtype=np.int64)
        fill = 0
        for k in range(self.row_ptr[r], self.row_ptr[r + 1]):
            d, start, take = int(self.seg_doc[k]), int(self.seg_start[k]), int(self.seg_len[k])
            tokens, targets = self.docs.doc(d)
            # labels[i] = tokens[i+1] where it is a target; the document's last token predicts
            # nothing (the next row's first token belongs to another segment).
            window_t = np.asarray(tokens[start:start + take + 1], dtype=np.int64)
            window_m = np.asarray(targets[start:start + take + 1])
            ids[fill:fill + take] = window_t[:take]
            lab[fill:fill + take - 1] = np.where(window_m[1:take], window_t[1:take], IGNORE_INDEX)
            if len(window_t) > take and window_m[take]:  # the document goes on past this segment
                lab[fill + take - 1] = window_t[take]
            pos[fill:fill + take] = np.arange(take)
            fill += take
        pos[fill:] = np.arange(length - fill)  # padding is a segment of its own
        return ids, lab, pos

    def gather(self, index) -> dict[str, torch.Tensor]:
        rows = [self.row(int(r)) for r in index]
        return {name: torch.from_numpy(np.stack([row[i] for row in rows]))
                for i, name in enumerate(("input_ids", "labels", "position_ids"))}

    def materialise(self) -> Rows:
        if len(self) == 0:
            return Rows(*(torch.zeros((0, self.length), dtype=torch.long) for _ in range(3)))
        batch = self.gather(range(len(self)))
        return Rows(batch["input_ids"], batch["labels"], batch["position_ids"])


def layout_rows(docs: TokenizedDocs, order: np.ndarray, length: int, pad_id: int, *,
                packing: bool, split_documents: bool) -> PackedRows:
    """Lay documents out in rows of `length` tokens (positions only; no token is copied).

    packing + split_documents (plain text): documents are concatenated and a document that
    crosses a row boundary continues in the next row, positions restarting there, so no token
    is wasted. packing without splitting (chat): a conversation that does not fit starts a new
    row; longer than a row, it is truncated. No packing: one document per row, truncated.
    Row tails are padding that nothing predicts.
    """
    lengths = np.diff(docs.offsets)
    seg_doc, seg_start, seg_len, row_ptr = [], [], [], [0]
    fill = 0

    def flush() -> None:
        nonlocal fill
        if fill:
            row_ptr.append(len(seg_doc))
            fill = 0

    for d in order:
        d = int(d)
        n = int(lengths[d])
        if not (packing and split_documents):
            n = min(n, length)
            if not packing or fill + n > length:
                flush()
        start = 0
        while start < n:
            take = min(n - start, length - fill)
            seg_doc.append(d)
            seg_start.append(start)
            seg_len.append(take)
            fill += take
            start += take
            if fill == length:
                flush()
    flush()
    return PackedRows(docs, length, pad_id, np.asarray(seg_doc, dtype=np.int64),
                      np.asarray(seg_start, dtype=np.int64), np.asarray(seg_len, dtype=np.int64),
                      np.asarray(row_ptr, dtype=np.int64))


def layout_pairs(docs: TokenizedDocs, order: np.ndarray, length: int, pad_id: int, *,
                 packing: bool) -> PackedRows:
    """Preference pairs (task dpo) in rows: each pair's chosen answer's chat, then its rejected
    answer's, positions restarting at each, so attention keeps them apart and the loss reads
    segments 2k and 2k+1 of a row as pair k. With packing, whole pairs fill a row while they
    fit; without, one pair a row. A pair is never cut: one longer than a row is refused,
    naming the length needed. `order` names pairs by their chosen document."""
    lengths = np.diff(docs.offsets)
    pair_len = [int(lengths[d] + lengths[d + 1]) for d in order]
    if too_long := [n for n in pair_len if n > length]:
        from countrytune.errors import UserError

        raise UserError(f"{len(too_long)} preference pairs do not fit a row of {length} tokens (the "
                        f"longest: {max(too_long)} tokens for both answers with their prompts); set "
                        f"training.sequence_length to at least {max(too_long)}")
    seg_doc, row_ptr, fill = [], [0], 0
    for d, n in zip(order, pair_len):
        if seg_doc and (not packing or fill + n > length):
            row_ptr.append(len(seg_doc))
            fill = 0
        seg_doc += [int(d), int(d) + 1]
        fill += n
    if seg_doc:
        row_ptr.append(len(seg_doc))
    seg_doc = np.asarray(seg_doc, dtype=np.int64)
    return PackedRows(docs, length, pad_id, seg_doc, np.zeros_like(seg_doc), lengths[seg_doc].astype(np.int64),
                      np.asarray(row_ptr, dtype=np.int64))


def pack_rows(docs: TokenizedDocs, order: np.ndarray, length: int, pad_id: int, *,
              packing: bool, split_documents: bool) -> Rows:
    """`layout_rows`, every row built now (evaluation sets, tests)."""
    return layout_rows(docs, order, length, pad_id, packing=packing,
                       split_documents=split_documents).materialise()


class RowSchedule:
    """Which rows a process reads at each micro-step: the same on every run of a recipe.

    Rows are consumed in a fixed global sequence, a fresh permutation of all rows per epoch
    (seeded by seed and epoch). Micro-step m of optimiser step s on rank r of W reads the
    `micro_batch` rows starting at ((s * accum + m) * W + r) * micro_batch. So resuming at step
    s needs no saved iterator, and the rows of one optimiser step are the same whether they
    come as 1 micro-batch of 8 or 8 of 1.
    """

    def __init__(self, rows: Rows | PackedRows, *, micro_batch: int, accumulation: int,
                 world_size: int, seed: int) -> None:
        if len(rows) == 0:
            raise ValueError("no training rows")
        self.rows, self.micro_batch, self.accumulation = rows, micro_batch, accumulation
        self.world_size, self.seed = world_size, seed
        self._perm_epoch, self._perm = -1, None

    def _row_index(self, i: int) -> int:
        epoch, within = divmod(i, len(self.rows))
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.rows), generator=gen), epoch
        return int(self._perm[within])

    def micro_batch_at(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        first = ((step * self.accumulation + micro) * self.world_size + rank) * self.micro_batch
        index = torch.tensor([self._row_index(first + j) for j in range(self.micro_batch)])
        if isinstance(self.rows, PackedRows):
            return self.rows.gather(index)
        return {"input_ids": self.rows.input_ids[index], "labels": self.rows.labels[index],
                "position_ids": self.rows.position_ids[index]}

    def epochs_at(self, step: int) -> float:
        rows_read = step * self.accumulation * self.world_size * self.micro_batch
        return rows_read / len(self.rows)


def eval_rows_for_rank(rows: Rows, micro_batch: int, rank: int, world_size: int,
                       pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Split evaluation rows over ranks, padding with empty rows so that every rank runs the
    same number of forward passes (ZeRO-3 gathers parameters collectively in each one)."""
    per_pass = micro_batch * world_size
    n = -(-len(rows) // per_pass) * per_pass
    pad = n - len(rows)
    length = rows.input_ids.shape[1]
    ids = torch.cat([rows.input_ids, torch.full((pad, length), pad_id, dtype=torch.long)])
    labels = torch.cat([rows.labels, torch.full((pad, length), IGNORE_INDEX, dtype=torch.long)])
    pos = torch.cat([rows.position_ids, torch.arange(length).repeat(pad, 1)])
    mine = torch.arange(rank, n, world_size)
    return [{"input_ids": ids[mine[i:i + micro_batch]], "labels": labels[mine[i:i + micro_batch]],
             "position_ids": pos[mine[i:i + micro_batch]]}
            for i in range(0, len(mine), micro_batch)]
