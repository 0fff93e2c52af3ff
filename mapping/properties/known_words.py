"""What a closed-vocabulary CLIP knows: its training words, shipped beside its weights.

A CLIP trained on a closed world (the project's fixture, trained on renders of the synthetic
world and their captions) embeds the words it was trained on; any other word goes through
token embeddings it never learnt, so a property described in such words ("turquoise",
"navy blue") scores noise, and a photo is nothing like what it has seen. Such a CLIP ships
``training_vocabulary.txt`` in its ``local-dir:`` folder: ``#`` lines say what it was
trained on, the other lines are its words. A CLIP without the file (any real one) is
taken to know every word.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from compsearch.mapping.errors import warn

VOCABULARY_FILE = "training_vocabulary.txt"
LOCAL_DIR = "local-dir:"
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg"})  # the world renders to PNG; photos come as JPEG
PHOTO_SAMPLE = 64  # images looked at to tell photos


@dataclass(frozen=True)
class ClosedVocabulary:
    file: Path
    trained_on: str  # e.g. "renders of the synthetic world (compsearch world)"
    words: frozenset[str]


def words_of(text: str) -> list[str]:
    """The lower-case words of ``text`` (letters only: punctuation and digits are no words)."""
    return re.findall(r"[a-z]+", text.lower())


def write_vocabulary(folder: Path, trained_on: str, texts: Iterable[str]) -> Path:
    """Write the training vocabulary of the CLIP in ``folder`` (a ``local-dir:`` folder)."""
    words = sorted({word for text in texts for word in words_of(text)})
    path = folder / VOCABULARY_FILE
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(f"# trained on: {trained_on}\n" + "\n".join(words) + "\n")
    staging.replace(path)  # atomic: a reader never sees half the words
    return path


def closed_vocabulary(clip_name: str | None) -> ClosedVocabulary | None:
    """The training vocabulary of the CLIP loaded as ``clip_name``, when it ships one (read
    each time: a small file, and a folder may get it after a first look)."""
    if not clip_name or not clip_name.startswith(LOCAL_DIR):
        return None
    path = Path(clip_name[len(LOCAL_DIR):]).expanduser() / VOCABULARY_FILE
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    trained_on = next((line.partition(":")[2].strip() for line in lines if line.startswith("#")), "a closed set")
    return ClosedVocabulary(path, trained_on, frozenset(line for line in lines if not line.startswith("#")))


def unknown_words(texts: Sequence[str], vocabulary: ClosedVocabulary) -> list[str]:
    """The words of ``texts`` the CLIP never learnt, in order of first use."""
    return list(dict.fromkeys(word for text in texts for word in words_of(text) if word not in vocabulary.words))


def warn_unknown_words(clip_name: str | None, texts: Sequence[str], what: str) -> list[str]:
    """Warn when ``texts`` (``what``: "property 'colour'", "the query") use words the CLIP
    ``clip_name`` never learnt; the words (empty for an open-vocabulary CLIP)."""
    vocabulary = closed_vocabulary(clip_name)
    unknown = unknown_words(texts, vocabulary) if vocabulary else []
    if unknown:
        shown = ", ".join(repr(word) for word in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        warn(f"{what} uses words the CLIP never learnt ({shown}): it was trained only on {vocabulary.trained_on}, "
             "so their text embeddings are noise",
             f"use words it knows (listed in {vocabulary.file}), or a CLIP trained on real captions")
    return unknown


def warn_if_photos(clip_name: str | None, paths: Iterable[Path | str], purpose: str) -> bool:
    """Warn when a closed-vocabulary CLIP's space is used (``purpose``) on photos (JPEGs among
    the first :data:`PHOTO_SAMPLE` images); whether it warned."""
    vocabulary = closed_vocabulary(clip_name)
    if vocabulary is None or not any(Path(path).suffix.lower() in PHOTO_SUFFIXES
                                     for path in islice(paths, PHOTO_SAMPLE)):
        return False
    warn(f"{purpose} through the CLIP {clip_name}, which was trained only on {vocabulary.trained_on} and knows only "
         f"its {len(vocabulary.words)} words, but these images are photos: the scores mean little",
         "on photos, define properties by labelled examples (`compsearch rank --examples DIR`, then "
         "`compsearch index --ranking`), or align to a CLIP trained on real photos")
    return True
