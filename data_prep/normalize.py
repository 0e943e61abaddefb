"""Normalisation: Unicode NFC, mojibake repair, control characters, white space, and the
script clean-ups a profile turns on (`normalize:`: Arabic tatweel, bidirectional marks,
digit forms).

Nothing else about the text changes: ftfy's fixes that rewrite legitimate characters
(curly quotes, ligatures, full-width forms) are off, case, punctuation and words are left
alone, and so are Arabic diacritics (harakat), which can tell words apart.
"""

from __future__ import annotations

import re

import ftfy

from countrytune.document import Document, Drop
from countrytune.profiles import NormalizeSpec
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
TATWEEL = "\u0640"
# LRM, RLM, ALM; LRE, RLE, PDF, LRO, RLO; LRI, RLI, FSI, PDI.
BIDI_CONTROLS = re.compile(r"[\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")
# Thai, Arabic-Indic and Extended Arabic-Indic (Persian, Urdu) digits -> ASCII, one for one,
# so offsets stay: PII matching runs on the folded text and redacts the original's spans.
DIGITS_TO_ASCII = str.maketrans({chr(base + i): str(i) for base in (0x0E50, 0x0660, 0x06F0)
                                 for i in range(10)})


def normalize_whitespace(text: str) -> str:
    text = _INVISIBLE.sub("", _ODD_SPACES.sub(" ", text))
    lines = [_HSPACE_RUN.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def script_cleanups(text: str, spec: NormalizeSpec) -> tuple[str, list[str]]:
    """The profile's clean-ups applied, and the names of those that changed something."""
    done = []
    if spec.remove_tatweel and TATWEEL in text:
        text = text.replace(TATWEEL, "")
        done.append("tatweel_removed")
    if spec.remove_bidi_controls and BIDI_CONTROLS.search(text):
        text = BIDI_CONTROLS.sub("", text)
        done.append("bidi_controls_removed")
    if spec.fold_digits and not text.isascii():
        folded = text.translate(DIGITS_TO_ASCII)
        if folded != text:
            text = folded
            done.append("digits_folded")
    return text, done


class Normalize(Step):
    name = "normalize"

    def __init__(self, spec: NormalizeSpec = NormalizeSpec()) -> None:
        super().__init__()
        self.spec = spec

    def process(self, doc: Document) -> Document | Drop:
        text = doc.text
        # ASCII text cannot hold mojibake or non-NFC sequences: skip ftfy, the costly part.
        if not text.isascii():
            fixed, steps = ftfy.fix_and_explain(text, FTFY_CONFIG)
            # ftfy explains mojibake repair as encode/decode pairs: count each kind once a doc.
            self.counters.update({"mojibake_repaired" if action in ("encode", "decode") else what
                                  for action, what in steps or ()})
            text, done = script_cleanups(fixed, self.spec)
            self.counters.update(done)
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
