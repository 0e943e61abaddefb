"""Vocabulary extension: new tokens for a country's languages, learnt by continuing the base
tokenizer's own byte-pair merges on the country's clean text.

Why continued merges and not `add_tokens`: an added token is matched in the raw text before
the tokenizer's own rules, so it changes how text around it is cut and can swallow pieces of
other words. Here the new tokens are BPE merges appended after every existing merge: the old
merges run first exactly as before, then the new ones join what is left. So every existing
token still encodes to itself (checked for the whole old vocabulary before anything is
written), old ids keep their meaning, and text decodes to itself.

The model gets one embedding (and output) row per new token, initialised to the mean of the
rows of the old pieces the token replaces, scaled to their mean norm: the model starts out
reading a new token roughly as it read its pieces (Mundra et al. 2024 and Yamaguchi et al.
2024 found this as good as costlier schemes).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise

from countrytune.errors import UserError


@dataclass
class LearntMerges:
    merges: list[tuple[str, str]]
    """New merges in the order learnt (their result is the new token)."""
    frequency: list[int]
    """How often each merge applied in the corpus when it was chosen."""


def _backend(tokenizer_json: dict):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(tokenizer_json))


def check_extendable(tokenizer_json: dict, where: str) -> None:
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE" or "merges" not in model:
        raise UserError(f"{where}: the tokenizer is {model.get('type')!r}, not a byte-pair-encoding model with "
                        f"merges; vocabulary extension by continued merges needs a BPE tokenizer.json "
                        f"(Llama 3, Qwen, SmolLM2, Gemma 3 and most current bases have one)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UserError(f"{where}: BPE with subword prefixes or suffixes is not supported for extension")


def word_counts(tokenizer_json: dict, texts) -> Counter:
    """Pre-tokenised words (in the model's alphabet, e.g. byte-level) and how often each occurs.

    The units are the model's own pre-tokens, not the language's words by its segmenter: the
    tokenizer applies merges only inside its pre-tokens, so a merge learnt across one never
    applies. Cutting them further at the language's word boundaries (Thai by PyThaiNLP) was
    measured and is worse: SmolLM2 + 2,000 merges learnt on PUD's prepared training Thai
    (bench/thai_chain.py) cut held-out Thai to 2.68 tokens per word with 51% of words in 3+
    pieces, against 2.61 and 48% here (from 9.01 and 98%): byte-level BPE already cuts Thai
    at every vowel and tone mark, and pieces across a word boundary are frequent Thai too."""
    backend = _backend(tokenizer_json)
    normalizer, pre = backend.normalizer, backend.pre_tokenizer
    counts: Counter = Counter()
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        pieces = pre.pre_tokenize_str(text) if pre is not None else [(text, None)]
        counts.update(piece for piece, _ in pieces)
    return counts


def learn_merges(tokenizer_json: dict, counts: Counter, add: int, min_frequency: int = 2,
                 progress=None) -> LearntMerges:
    """Continue BPE training from the tokenizer's current state: each round joins the most
    frequent adjacent pair (weighted by word frequency) whose result is not yet a token."""
    backend = _backend(tokenizer_json)
    model = backend.model
    vocab = set(tokenizer_json["model"]["vocab"]) | {t["content"] for t in tokenizer_json.get("added_tokens", [])}
    words: list[list[str]] = []
    freqs: list[int] = []
    for word, n in counts.items():
        words.append([t.value for t in model.tokenize(word)])
        freqs.append(n)
    pair_count: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, (w, n) in enumerate(zip(words, freqs)):
        for pair in pairwise(w):
            pair_count[pair] += n
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)
    merges, applied = [], []
    while heap and len(merges) < add:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        joined = pair[0] + pair[1]
        if joined in vocab:
            continue  # already a token the old merges do not reach this way: leave it alone
        vocab.add(joined)
        merges.append(pair)
        applied.append(-neg)
        changed: set[tuple[str, str]] = set()
        for i in list(where[pair]):
            w, n = words[i], freqs[i]
            for p in pairwise(w):
                pair_count[p] -= n
                changed.add(p)
            merged, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == pair:
                    merged.append(joined)
                    j += 2
                else:
                    merged.append(w[j])
                    j += 1
            words[i] = merged
            for p in pairwise(merged):
                pair_count[p] += n
                where[p].add(i)
                changed.add(p)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
        if progress is not None:
            progress(1)
    return LearntMerges(merges, applied)


def extended_tokenizer_json(tokenizer_json: dict, learnt: LearntMerges) -> tuple[dict, list[str]]:
    """The tokenizer with the merges appended and their tokens given the next free ids."""
    out = json.loads(json.dumps(tokenizer_json))
    vocab = out["model"]["vocab"]
    next_id = 1 + max([*vocab.values(), *(t["id"] for t in out.get("added_tokens", []))])
    as_pairs = bool(out["model"]["merges"]) and isinstance(out["model"]["merges"][0], list)
    new_tokens = []
    for a, b in learnt.merges:
        vocab[a + b] = next_id
        next_id += 1
        new_tokens.append(a + b)
        out["model"]["merges"].append([a, b] if as_pairs else f"{a} {b}")
    return out, new_tokens


def check_old_tokens_unchanged(old_json: dict, new_json: dict) -> int:
    """Every token of the old vocabulary must encode exactly as before; returns how many were
    checked. Raises on any difference (nothing is written then)."""
    old, new = _backend(old_json), _backend(new_json)
    old_model, new_model = old.model, new.model
    # Added (special) tokens are matched in the text before the model runs, never by merges.
    specials = {t["content"] for t in old_json.get("added_tokens", [])}
    changed = []
    for token in old_json["model"]["vocab"]:
        if token in specials:
            continue
        before = [t.id for t in old_model.tokenize(token)]
        after = [t.id for t in new_model.tokenize(token)]
        if before != after:
            changed.append(token)
    if changed:
        raise RuntimeError(f"{len(changed)} existing tokens would encode differently after extension "
                           f"(e.g. {changed[:5]}); nothing was written")
    return len(old_json["model"]["vocab"])


def old_pieces(old_json: dict, new_tokens: list[str]) -> list[list[int]]:
    """The old token ids each new token replaces (how the old tokenizer cut its string)."""
    model = _backend(old_json).model
    return [[t.id for t in model.tokenize(token)] for token in new_tokens]


def init_new_rows(weight, first_new: int, pieces: list[list[int]]) -> None:
    """Rows first_new.. of an embedding or output matrix: the mean of the old pieces' rows,
    scaled to the pieces' mean norm (a plain mean of differently oriented rows is shorter)."""
    import torch

    with torch.no_grad():
        for k, ids in enumerate(pieces):
            rows = weight[ids].float()
            mean = rows.mean(0)
            norm = mean.norm()
            if norm > 0:
                mean = mean * (rows.norm(dim=1).mean() / norm)
            weight[first_new + k] = mean.to(weight.dtype)
