"""How many pieces a tokenizer cuts a language into: tokens per word, bytes per token, and the
share of words split into 3 or more pieces, on a language's held-out text.

Words are whitespace-separated. A word's pieces are the tokens it adds after a preceding word
("a omah" against "a"), so it is cut as inside a sentence whatever the tokenizer does with
spaces (byte-level BPE's "Ġomah", SentencePiece's "▁omah", with or without a dummy prefix);
tokens per word and bytes per token count the whole documents as the model sees them. Fewer tokens per word is more text per context,
faster training and serving of the same text, and more of each word in one embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


def measure(tok: TextTokenizer, lang: str, texts: list[str]) -> Fertility:
    words = tokens = nbytes = split = 0
    pieces: dict[str, int] = {}  # each distinct word is encoded once
    lead = len(tok.encode("a"))
    for text in texts:
        tokens += len(tok.encode(text))
        nbytes += len(text.encode("utf-8"))
        for word in text.split():
            words += 1
            n = pieces.get(word)
            if n is None:
                n = pieces[word] = len(tok.encode("a " + word)) - lead
            split += n >= SPLIT_PIECES
    if not words:
        raise ValueError(f"{lang}: no words to measure")
    return Fertility(lang, len(texts), words, nbytes, tokens, split)
