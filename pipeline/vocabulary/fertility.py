"""How many pieces a tokenizer cuts a language into: tokens per word, bytes per token, and the
share of words split into 3 or more pieces, on a language's held-out text.

Words are the language's words by its segmenter (`countrytune/words.py`, named by the country
profile): white space for scripts that space their words, a dictionary segmenter for Thai,
whose sentences are one white-space "word" each. A word's pieces are the tokens it adds after
what precedes it, so it is cut as inside a sentence whatever the tokenizer does at the start
of a text. After white space (or at the start of a text) that is "a omah" against "a", as
byte-level BPE's "Ġomah" and SentencePiece's "▁omah" are cut with or without a dummy prefix;
a word glued to the one before (Thai) is measured after that word: "ไปใช้" against "ไป".
Tokens per word and bytes per token count the whole documents as the model sees them. Fewer
tokens per word is more text per context, faster training and serving of the same text, and
more of each word in one embedding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

from countrytune.words import Segmenter, whitespace
from pipeline.vocabulary.sources import TextTokenizer

SPLIT_PIECES = 3  # a word cut into this many pieces or more counts as split


@dataclass(frozen=True)
class Fertility:
    lang: str
    docs: int
    words: int
    bytes: int
    tokens: int
    split_words: int
    """Word occurrences cut into SPLIT_PIECES or more pieces."""

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens

    @property
    def split_share(self) -> float:
        return self.split_words / self.words

    def to_json(self) -> dict:
        return {**asdict(self), "tokens_per_word": self.tokens_per_word,
                "bytes_per_token": self.bytes_per_token, "split_share": self.split_share}


def in_context(text: str, words: list[str]) -> Iterator[tuple[str | None, str]]:
    """Each word with what it is measured after: None when white space or the start of the
    text precedes it, else the text from the previous word's start up to it (the previous
    word and any punctuation between). A word not found in the text counts as spaced."""
    pos = prev = 0
    for word in words:
        start = text.find(word, pos)
        if start < 0:
            yield None, word
            continue
        yield (None if start == 0 or text[start - 1].isspace() else text[prev:start]), word
        prev, pos = start, start + len(word)


def measure(tok: TextTokenizer, lang: str, texts: list[str], words: Segmenter = whitespace) -> Fertility:
    """Fertility of `tok` on `texts`, counting the words `words` (the language's segmenter)
    finds; with the whitespace segmenter, str.split's words."""
    n_words = tokens = nbytes = split = 0
    pieces: dict[tuple[str | None, str], int] = {}  # each word in each context is encoded once
    lead = len(tok.encode("a"))
    for text in texts:
        tokens += len(tok.encode(text))
        nbytes += len(text.encode("utf-8"))
        for context, word in in_context(text, words(text)):
            n_words += 1
            n = pieces.get((context, word))
            if n is None:
                n = pieces[context, word] = (len(tok.encode("a " + word)) - lead if context is None
                                             else len(tok.encode(context + word)) - len(tok.encode(context)))
            split += n >= SPLIT_PIECES
    if not n_words:
        raise ValueError(f"{lang}: no words to measure")
    return Fertility(lang, len(texts), n_words, nbytes, tokens, split)
