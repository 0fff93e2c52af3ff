"""The CLIP byte-pair tokenizer without torch: open_clip's ``SimpleTokenizer`` (clean
``lower``, no reduction) reimplemented over open_clip's own vocabulary file, found without
importing open_clip (whose tokenizer module imports torch). Token ids equal open_clip's,
checked by the tests on a varied corpus."""
from __future__ import annotations

import gzip
import html
import importlib.util
import re
from functools import cache
from pathlib import Path

import numpy as np
import regex

from compsearch.mapping.errors import CompsearchError

VOCABULARY = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary uses, after the 256 bytes (×2) and 2 specials
START, END = "<start_of_text>", "<end_of_text>"


def vocabulary_file() -> Path:
    """open_clip's bundled BPE file, located from the package's spec (nothing imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise CompsearchError("open_clip is not installed: the CLIP vocabulary is missing",
                              "install compsearch's dependencies (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / VOCABULARY


@cache
def byte_symbols() -> dict[int, str]:
    """Each byte as a printable character (CLIP's reversible byte → unicode table): printable
    Latin-1 bytes stand for themselves, the others for characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + n) for n, byte in enumerate(others)}}


_PLAIN = re.compile(r"[ -%'-~\t\n]*")  # printable ASCII but '&', tabs and newlines


def _fix_text(text: str) -> str:
    """``ftfy.fix_text(text)``, as open_clip cleans text first. Plain ASCII without '&' or
    control characters is what ftfy leaves as it is (its fixes concern mojibake, other scripts'
    quotes and widths, control characters and HTML entities), so the common query skips
    importing it (~0.1 s)."""
    if _PLAIN.fullmatch(text):
        return text
    import ftfy

    return ftfy.fix_text(text)


class ClipTokenizer:
    """Texts → ``(n, context_length)`` int64 token ids, as open_clip's tokenizer gives them."""

    def __init__(self, context_length: int, vocabulary: Path | None = None) -> None:
        self.context_length = context_length
        # Merges stay lines ("a b"), as pairs are looked up: splitting 48,894 of them into
        # tuples would cost a cold query ~30 ms.
        merges = gzip.open(vocabulary or vocabulary_file()).read().decode("utf-8").split("\n")[1:MERGES + 1]
        symbols = list(byte_symbols().values())
        words = [*symbols, *(symbol + "</w>" for symbol in symbols), *(merge.replace(" ", "") for merge in merges),
                 START, END]
        self.ids = {word: i for i, word in enumerate(words)}
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.start, self.end = self.ids[START], self.ids[END]
        self.pattern = regex.compile(
            rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE)
        self._pieces: dict[str, list[str]] = {START: [START], END: [END]}

    def __call__(self, texts: list[str]) -> np.ndarray:
        tokens = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.start, *self.encode(text), self.end]
            if len(ids) > self.context_length:  # truncated, still ending in the end token
                ids = [*ids[:self.context_length - 1], self.end]
            tokens[row, :len(ids)] = ids
        return tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no start or end token)."""
        cleaned = " ".join(html.unescape(html.unescape(_fix_text(text))).strip().split()).lower()
        ids = []
        for word in self.pattern.findall(cleaned):
            ids += [self.ids[piece] for piece in self._bpe("".join(byte_symbols()[b] for b in word.encode("utf-8")))]
        return ids

    def _bpe(self, word: str) -> list[str]:
        """``word``'s pieces: starting from its symbols (the last marked as the word's end), the
        lowest-ranked adjacent pair is merged everywhere, until no known pair is left."""
        if word in self._pieces:
            return self._pieces[word]
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = min((f"{first} {second}" for first, second in zip(pieces, pieces[1:])),
                       key=lambda pair: self.ranks.get(pair, MERGES))
            if pair not in self.ranks:
                break
            first, second = pair.split(" ")
            merged, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and pieces[i] == first and pieces[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(pieces[i])
                    i += 1
            pieces = merged
        self._pieces[word] = pieces
        return pieces
