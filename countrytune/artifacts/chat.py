"""Chat records: what `countrytune sft-data` writes (data/train-NNNNN.jsonl, one record a
line) and what training reads for `task: sft`, defined once. `check_chat` is the rule both
apply to a conversation; a record that breaks it is rejected with its reason, never trained on.
"""

from __future__ import annotations

import json
from typing import Any

from countrytune.schema import Schema

ROLES = ("system", "user", "assistant")


class ChatRecord(Schema):
    """One line of an sft-data output."""

    id: str
    """Unique in the output; a translation record's is `translation_record_id`'s."""
    lang: str
    messages: list[dict[str, str]]
    """[system,] user, assistant, user, assistant, ...: {role, content}."""
    label: Any = None
    """The labelled record's label the assistant's answer says."""
    template: str
    """Which instruction template made the prompt."""
    source: str
    """FILE:ORDINAL of the labelled record."""


def chat_line(record: dict[str, Any]) -> str:
    """A record as its JSONL line; a record the schema or `check_chat` refuses is a bug of the
    writer (it checks each record first and rejects, counted, what fails)."""
    checked = ChatRecord.model_validate(record)
    if (problem := check_chat(checked.messages)) is not None:
        raise ValueError(f"chat record {checked.id}: {problem[0]}: {problem[1]}")
    return json.dumps(checked.model_dump(mode="json"), ensure_ascii=False) + "\n"


def check_chat(messages: Any, max_turn_chars: int | None = None) -> tuple[str, str] | None:
    """Why a chat cannot be trained on, as (reason, detail), or None when it can.

    A chat is a list of {role, content}: an optional system turn first, then user and
    assistant turns alternating, starting with user and ending with assistant."""
    if not isinstance(messages, list) or not messages:
        return "not_a_chat", "expected a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return "bad_turn", f"turn {i}: expected {{role: one of {list(ROLES)}, content: text}}"
        if not m["content"].strip():
            return "empty_turn", f"turn {i} ({m['role']}) is empty"
        if max_turn_chars is not None and len(m["content"]) > max_turn_chars:
            return "turn_too_long", f"turn {i} ({m['role']}): {len(m['content'])} characters > {max_turn_chars}"
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * ((len(body) + 1) // 2)
    if not body or body != expected[:len(body)] or body[-1] != "assistant":
        return "role_order", f"roles {roles}: expected [system,] user, assistant, user, assistant, ..."
    return None


def translation_record_id(task: str, src: str, tgt: str, sentence_id: str) -> str:
    """A translation record's id, `task:src>tgt:sentence_id`. Records of one task with the same
    sentence id are the same sentence, whatever their direction (parallel data): preference
    pairs find a sentence's other languages by it."""
    return f"{task}:{src}>{tgt}:{sentence_id}"


def parse_translation_record_id(record_id: str) -> tuple[str, str, str, str] | None:
    """(task, source language, target language, sentence id) of a translation record's id, or
    None for another task's record."""
    parts = record_id.split(":", 2)
    if len(parts) != 3 or parts[1].count(">") != 1:
        return None
    src, tgt = parts[1].split(">")
    return parts[0], src, tgt, parts[2]
