"""`countrytune tokenizer extend`: a base model directory with the country's new tokens.

Reads the country's clean text (prep outputs), learns the merges (`extend.py`), checks that
every old token encodes as before, resizes the model's embeddings and output head, initialises
the new rows, and writes a new model directory whole (temporary sibling, then rename) with
`vocabulary_extension.json` (what was added, from which text, fertility before and after) and
a provenance.json that keeps the parent's source and licence and records the derivation.
Before the rename it is loaded back: text decodes to itself, and on text the old tokenizer
cuts, the new model's logits over the old vocabulary equal the parent's (to float rounding).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from countrytune.artifacts.prep_output import open_prep_output
from countrytune.artifacts.vocabulary_extension import RECORD_NAME, VocabularyExtension, write_extension
from countrytune.errors import UserError
from countrytune.hashing import sha256_file
from countrytune.words import Segmenter, whitespace
from pipeline.vocabulary import extend

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class CorpusText:
    texts: list[str]
    chars: dict[str, int]
    """Characters used per language."""
    inputs: list[dict]
    """Each shard read: path and SHA-256."""


def read_corpus(prep_dirs: list[Path], languages: list[str] | None, chars_per_language: int) -> CorpusText:
    """Clean text of the chosen languages, up to the same number of characters each (so a
    language with much text does not take all the new tokens), from prep outputs. Reading
    stops once every language has its share: a national corpus is not read whole for this."""
    from countrytune.parquet import row_group_batches

    shards, present = [], set()
    for d in prep_dirs:
        prep = open_prep_output(d, f"--corpus {d}")
        shards += [p for p in prep.data_files() if p.suffix == ".parquet"]
        present |= {lang for lang, row in prep.stats.languages.items() if row.get("docs_out")}
    wanted = set(languages) if languages else present - {"eng"}
    texts, chars, inputs = [], {}, []
    for shard in shards:
        if all(chars.get(lang, 0) >= chars_per_language for lang in wanted):
            break
        inputs.append({"path": str(shard), "sha256": sha256_file(shard)})
        for batch in row_group_batches(shard, 4096, columns=["text", "lang"]):
            for row in batch.to_pylist():
                lang = row["lang"]
                if lang not in wanted or chars.get(lang, 0) >= chars_per_language:
                    continue
                texts.append(row["text"])
                chars[lang] = chars.get(lang, 0) + len(row["text"])
    if not texts:
        raise UserError(f"no text of {sorted(wanted) or 'any non-English language'} in {[str(d) for d in prep_dirs]}")
    return CorpusText(texts, chars, inputs)


def extend_base(base: Path, corpus: CorpusText, to: Path, *, add: int, min_frequency: int,
                heldout: dict[str, list[str]], words: Mapping[str, Segmenter] | None = None,
                log: Callable[[str], None] = print, progress: Callable[[int], None] | None = None) -> dict:
    """Write the extended base to `to`; returns the extension record. Fertility before and
    after is measured on `heldout` (language -> texts), counting each language's words by its
    segmenter in `words` (white space for a language it does not name)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from countrytune.hf_models import load_causal_lm
    from countrytune.atomic import check_new_folder
    from countrytune.artifacts.provenance import PROVENANCE_NAME, read_provenance
    from pipeline.vocabulary.fertility import measure
    from pipeline.vocabulary.sources import hf_text_tokenizer

    if add < 1:
        raise UserError(f"--add {add}: give the number of tokens to add (1 or more)")
    check_new_folder(to)
    hf_logging.disable_progress_bar()
    tok_path = base / "tokenizer.json"
    if not tok_path.is_file():
        raise UserError(f"--base {base}: no tokenizer.json (a Hugging Face model directory, e.g. from "
                        f"`countrytune model import`)")
    old_json = json.loads(tok_path.read_text(encoding="utf-8"))
    extend.check_extendable(old_json, str(tok_path))
    parent = read_provenance(base)

    learnt, new_json, new_tokens = _learn_tokens(old_json, corpus, add, min_frequency, log, progress)

    model = load_causal_lm(base, dtype=torch.float32)
    old_tok = AutoTokenizer.from_pretrained(base)
    # The parent's logits on old-token text, kept to check the written model against
    ids = old_tok(corpus.texts[0], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        parent_logits = model(ids).logits
    old_rows = model.get_input_embeddings().weight.shape[0]
    first_new = min(new_json["model"]["vocab"][t] for t in new_tokens)
    if first_new > old_rows:
        raise UserError(f"{base}: the tokenizer already has ids up to {first_new - 1} but the model only "
                        f"{old_rows} embedding rows; fix the base before extending it")
    # Rows the model pads beyond its tokenizer (Qwen pads to a multiple of 64) are never
    # produced by the tokenizer: new tokens may take them.
    pieces = extend.old_pieces(old_json, new_tokens)
    model.resize_token_embeddings(max(old_rows, first_new + len(new_tokens)), mean_resizing=False)
    extend.init_new_rows(model.get_input_embeddings().weight, first_new, pieces)
    out_emb = model.get_output_embeddings()
    if out_emb is not None and out_emb.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        extend.init_new_rows(out_emb.weight, first_new, pieces)

    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.parent / f".{to.name}.extending-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in os.listdir(base):  # tokenizer files, licence, anything else beside the weights
            src = base / name
            if src.is_file() and not (tmp / name).exists() and name != PROVENANCE_NAME and not name.endswith(".safetensors"):
                shutil.copyfile(src, tmp / name)
        (tmp / "tokenizer.json").write_text(json.dumps(new_json, ensure_ascii=False), encoding="utf-8")
        log("checking the written model (decode round trip, old-vocabulary logits equal the parent's)")
        new_tok = _verify(tmp, old_tok, ids, parent_logits, first_new, corpus.texts[:64])
        before, after = hf_text_tokenizer(old_tok, "before"), hf_text_tokenizer(new_tok, "after")
        words = words or {}
        fertility = {lang: {"before": measure(before, lang, texts, words.get(lang, whitespace)).to_json(),
                            "after": measure(after, lang, texts, words.get(lang, whitespace)).to_json()}
                     for lang, texts in sorted(heldout.items())}
        record = VocabularyExtension.model_validate({"format_version": 1, "parent": str(base), "added_tokens": len(new_tokens),
                  "first_new_id": first_new, "vocab_size": model.config.vocab_size,
                  "min_frequency": min_frequency, "corpus": {"characters": corpus.chars, "inputs": corpus.inputs},
                  "fertility_on_heldout": fertility,
                  "new_tokens": [{"id": first_new + k, "token": t, "merge": list(m), "frequency": f,
                                  "old_pieces": p}
                                 for k, (t, m, f, p) in enumerate(zip(new_tokens, learnt.merges,
                                                                      learnt.frequency, pieces))]})
        write_extension(tmp, record)
        if parent is not None:
            _write_derived_provenance(tmp, base, parent, len(new_tokens))
        if to.exists():
            to.rmdir()  # empty: check_new_folder allowed it
        os.rename(tmp, to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record.model_dump(mode="json")


def _learn_tokens(old_json: dict, corpus: CorpusText, add: int, min_frequency: int,
                  log: Callable[[str], None], progress: Callable[[int], None] | None):
    """Up to `add` merges learnt on the corpus and the tokenizer JSON that holds them, checked to
    encode every old token as before: (learnt merges, new tokenizer JSON, new token strings)."""
    log(f"pre-tokenising {sum(corpus.chars.values()):,} characters of "
        f"{', '.join(f'{k} {v:,}' for k, v in sorted(corpus.chars.items()))}")
    counts = extend.word_counts(old_json, corpus.texts)
    log(f"learning up to {add:,} merges over {len(counts):,} distinct pre-tokens")
    learnt = extend.learn_merges(old_json, counts, add, min_frequency, progress)
    if not learnt.merges:
        raise UserError(f"no new merge occurs {min_frequency}+ times in this text; give more text "
                        f"(--corpus, --chars-per-language) or a lower --min-frequency")
    if len(learnt.merges) < add:
        log(f"only {len(learnt.merges):,} merges occur {min_frequency}+ times in this text")
    new_json, new_tokens = extend.extended_tokenizer_json(old_json, learnt)
    checked = extend.check_old_tokens_unchanged(old_json, new_json)
    log(f"all {checked:,} old tokens encode as before")
    return learnt, new_json, new_tokens


def _write_derived_provenance(folder: Path, base: Path, parent, added: int) -> None:
    """The parent's provenance.json carried to the extended model: its files now, and one more
    derivation naming the parent and the extension record."""
    from countrytune.artifacts.provenance import PROVENANCE_NAME, Derivation, WrittenFile, write_provenance

    files = [WrittenFile(path=p.relative_to(folder).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
             for p in sorted(folder.rglob("*")) if p.is_file()]
    derivation = Derivation(kind="vocabulary_extension", parent=str(base), parent_model_name=parent.model_name,
                            parent_provenance_sha256=sha256_file(base / PROVENANCE_NAME), record=RECORD_NAME,
                            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_provenance(folder, parent.model_copy(update={
        "model_name": f"{parent.model_name}+{added}tok", "files": files,
        "derivations": [*parent.derivations, derivation]}))


def _verify(written: Path, old_tok, ids, parent_logits, old_tokens: int, texts: list[str]):
    """Load the written model back: text must decode as the parent's tokenizer decodes it, and
    its logits over the old vocabulary must be the parent's. Returns the written tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from countrytune.hf_models import load_causal_lm

    new_tok = AutoTokenizer.from_pretrained(written)
    for text in texts:
        if new_tok.decode(new_tok(text, add_special_tokens=False)["input_ids"]) != old_tok.decode(
                old_tok(text, add_special_tokens=False)["input_ids"]):
            raise RuntimeError(f"extended tokenizer does not decode {text[:60]!r} as the parent does")
    reloaded = load_causal_lm(written, dtype=torch.float32).eval()
    with torch.no_grad():
        b = reloaded(ids).logits
    # equal up to float rounding: the output matrix multiply has more columns now, and the
    # BLAS may block it differently
    a, b = parent_logits[..., :old_tokens], b[..., :old_tokens]
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-4):
        raise RuntimeError("the extended model's logits over the old vocabulary differ from the parent's "
                           f"(largest difference {float((a - b).abs().max()):.2e})")
    return new_tok
