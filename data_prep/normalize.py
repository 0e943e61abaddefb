"""Normalisation: Unicode NFC, mojibake repair, control characters, white space.

Nothing else about the text changes: ftfy's fixes that rewrite legitimate characters
(curly quotes, ligatures, full-width forms) are off, and case, punctuation and words are
left alone.
"""

from __future__ import annotations

import re

import ftfy

from countrytune.document import Document, Drop
from data_prep.step import Step

FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html="auto",
    fix_encoding=True,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=True,
    remove_control_chars=True,
    normalization="NFC",
    explain=True,
)

# Spaces other than U+0020 that text tools copy in from the web (no-break, thin, ideographic),
# and the invisible ones that only split words for a tokenizer (zero-width space, BOM).
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile(r"[\u200b\ufeff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HSPACE_RUN = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    text = _INVISIBLE.sub("", _ODD_SPACES.sub(" ", text))
    lines = [_HSPACE_RUN.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


class Normalize(Step):
    name = "normalize"

    def process(self, doc: Document) -> Document | Drop:
        text = doc.text
        # ASCII text cannot hold mojibake or non-NFC sequences: skip ftfy, the costly part.
        if not text.isascii():
            fixed, steps = ftfy.fix_and_explain(text, FTFY_CONFIG)
            # ftfy explains mojibake repair as encode/decode pairs: count each kind once a doc.
            self.counters.update({"mojibake_repaired" if action in ("encode", "decode") else what
                                  for action, what in steps or ()})
            text = fixed
        elif _CONTROL.search(text):
            text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
            self.counters["remove_control_chars"] += 1
        spaced = normalize_whitespace(text)
        if spaced != text:
            self.counters["whitespace_normalised"] += 1
        if not spaced:
            return Drop("empty_after_normalize")
        if spaced != doc.text:
            self.counters["docs_changed"] += 1
            doc.text = spaced
        return doc
