"""Captions for world images: full or partial, in varied phrasings, and zero-shot prompts.

A caption names any non-empty subset of an item's factors, e.g. "a red striped star on a
beach", "striped red star, sandy background", "a photo of something on a beach", "a star".
The words include the project's default property vocabularies (docs/architecture.md, Property vectors: "circular",
"polka dot", "checkered", "beach", "city", …) so the fixture CLIP can be probed with them.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from compsearch.indexer.world.factors import FACTORS
from compsearch.mapping.errors import CompsearchError

SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "circular shape"),
    "square": ("square", "rectangular shape", "box shape"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "star shape"),
    "heart": ("heart", "heart shape", "heart-shaped object"),
    "cross": ("cross", "plus sign", "cross shape"),
}
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object", "thing")
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid", "uniform"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "polka dot", "spotted"),
    "checkered": ("checkered", "chequered", "checkerboard"),
    "noisy": ("noisy", "mottled", "blotchy"),
}
# Each scene as a trailing phrase ("on a beach") and as a background adjective ("sandy");
# the plain scene avoids the word "plain", which names a pattern.
SCENE_PHRASES: dict[str, tuple[str, ...]] = {
    "plain": ("on a blank background", "on an empty background"),
    "beach": ("on a beach", "at the beach", "on the sand"),
    "forest": ("in a forest", "in the woods", "among trees"),
    "city": ("in a city", "in front of buildings", "in town"),
    "water": ("on water", "on the sea", "over waves"),
}
SCENE_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "plain": ("blank", "empty", "bare"),
    "beach": ("beach", "sandy"),
    "forest": ("forest", "leafy"),
    "city": ("city", "urban"),
    "water": ("water", "sea"),
}
PREFIXES: tuple[str, ...] = ("", "", "a photo of ", "an image of ", "a picture of ")


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[rng.integers(len(words))]


def compose_caption(factors: Mapping[str, str], rng: np.random.Generator) -> str:
    """A caption naming exactly the given factors (any non-empty subset of an item's)."""
    adjectives = [factors["colour"]] if "colour" in factors else []
    if "pattern" in factors:
        adjectives.append(_pick(rng, PATTERN_WORDS[factors["pattern"]]))
    rng.shuffle(adjectives)
    noun = _pick(rng, SHAPE_NOUNS[factors["shape"]] if "shape" in factors else GENERIC_NOUNS)
    phrase = " ".join([*adjectives, noun])
    scene = factors.get("scene")
    if scene is not None and rng.random() < 0.4:
        return f"{phrase}, {_pick(rng, SCENE_ADJECTIVES[scene])} background"
    caption = _pick(rng, PREFIXES) + _with_article(phrase)
    return f"{caption} {_pick(rng, SCENE_PHRASES[scene])}" if scene is not None else caption


def caption_pieces() -> list[str]:
    """Every piece :func:`compose_caption` joins with spaces or ", ". The CLIP tokenizer splits
    at spaces and punctuation before it merges, so a caption's tokens are its pieces' tokens."""
    tables = (SHAPE_NOUNS, PATTERN_WORDS, SCENE_PHRASES, SCENE_ADJECTIVES)
    words = [piece for table in tables for pieces in table.values() for piece in pieces]
    return [*words, *GENERIC_NOUNS, *PREFIXES, *FACTORS["colour"], "a", "an", ", background"]


def random_caption(factors: Mapping[str, str], rng: np.random.Generator, full_share: float = 0.5) -> str:
    """Names all factors with probability ``full_share``, else a random non-empty subset."""
    names = list(FACTORS)
    if rng.random() >= full_share:
        keep = rng.random(len(names)) < 0.5
        keep[rng.integers(len(names))] = True
        names = [name for name, kept in zip(names, keep) if kept]
    return compose_caption({name: factors[name] for name in names}, rng)


def canonical_caption(factors: Mapping[str, str]) -> str:
    """The one fixed full caption stored with each image ("a red striped star on a beach")."""
    return (f"{_with_article(factors['colour'] + ' ' + factors['pattern'] + ' ' + factors['shape'])}"
            f" {SCENE_PHRASES[factors['scene']][0]}")


def zero_shot_prompts(factor: str, value: str) -> list[str]:
    """Prompts naming one factor value alone, averaged into a zero-shot class embedding."""
    if factor == "shape":
        return [_with_article(noun) for noun in SHAPE_NOUNS[value]]
    if factor == "colour":
        return [_with_article(f"{value} {noun}") for noun in GENERIC_NOUNS]
    if factor == "pattern":
        return [_with_article(f"{word} {noun}") for word in PATTERN_WORDS[value] for noun in GENERIC_NOUNS[:1]]
    if factor == "scene":
        return [f"a shape {phrase}" for phrase in SCENE_PHRASES[value]]
    raise CompsearchError(f"unknown world factor {factor!r}", f"use one of {', '.join(FACTORS)}")
