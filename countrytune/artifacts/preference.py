"""Preference pairs: what `countrytune preference-pairs` writes (data/train-NNNNN.jsonl, one
pair a line, in a folder shaped like prep's with stats.json of kind `preference-pairs`) and
what training reads for `task: dpo`, defined once.

A pair is one prompt (a chat ending with the user's turn) and two answers to it, the one the
verifier preferred and the one it ranked last, each with the verifier's judgement, so a
reader of the data (or of the model card) can see why one was preferred.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from countrytune.artifacts.chat import check_chat
from countrytune.schema import Schema

KIND = "preference-pairs"


class Judgement(Schema):
    """What the verifier found in one answer."""

    origin: Literal["sample", "reference", "parallel"]
    """sample: written by the model being tuned; reference: the task's own answer, used as the
    chosen side when no sample passed the verifier (and in contrast pairs); parallel: the same
    sentence's reference in another language, the rejected side of a contrast pair."""
    language: str | None = None
    """The language prep's identifier puts the answer in (translations; None for label answers)."""
    language_ok: bool
    """The answer is in the language asked for (always true where the task asks no language)."""
    score: float
    """chrF++ against the reference (translation), or 1/0 for the right/wrong label."""
    finished: bool = True
    """The answer ended its turn within max_new_tokens. A cut-off one is never chosen (its chat
    would teach stopping mid-sentence); it may be the rejected side."""
    why: str
    """The judgement in words, e.g. "jav as asked, chrF++ 41.2" or "ind, asked jav"."""


class PreferencePair(Schema):
    """One line of a preference-pairs output."""

    id: str
    lang: str
    """The language the answer should be in (the record's language in the SFT data)."""
    task: str
    """translation or classification."""
    prompt: list[dict[str, str]]
    """[system,] user[, assistant, user ...]: the chat up to the answer."""
    chosen: str
    rejected: str
    chosen_judgement: Judgement
    rejected_judgement: Judgement
    template: str
    source: str
    """The SFT record the prompt came from (its id)."""


def pair_messages(pair: dict[str, Any], side: Literal["chosen", "rejected"]) -> list[dict[str, str]]:
    """The pair's prompt with one of its answers as the assistant's turn: a chat training reads."""
    return [*pair["prompt"], {"role": "assistant", "content": pair[side]}]


def check_pair(record: Any) -> tuple[str, str] | None:
    """Why a record cannot be trained on as a pair, as (reason, detail), or None when it can."""
    if not isinstance(record, dict):
        return "not_a_pair", "expected an object with prompt, chosen and rejected"
    for field in ("prompt", "chosen", "rejected"):
        if field not in record:
            return "not_a_pair", f"no {field!r}"
    if not isinstance(record["chosen"], str) or not isinstance(record["rejected"], str):
        return "not_a_pair", "chosen and rejected must be text"
    if record["chosen"] == record["rejected"]:
        return "same_answers", "chosen and rejected are the same text: nothing to prefer"
    for side in ("chosen", "rejected"):
        if (problem := check_chat(pair_messages(record, side))) is not None:
            return problem
    return None


def pair_line(record: dict[str, Any]) -> str:
    """A pair as its JSONL line; a pair the schema or `check_pair` refuses is a bug of the
    writer (it checks each pair first and rejects, counted, what fails)."""
    checked = PreferencePair.model_validate(record)
    dumped = checked.model_dump(mode="json")
    if (problem := check_pair(dumped)) is not None:
        raise ValueError(f"preference pair {checked.id}: {problem[0]}: {problem[1]}")
    return json.dumps(dumped, ensure_ascii=False) + "\n"
