"""Captions name exactly the factors they are given, in varied phrasings."""
from __future__ import annotations

import numpy as np
import pytest

from compsearch.indexer.world import FACTORS, draw_item, random_caption, zero_shot_prompts
from compsearch.indexer.world.captions import PATTERN_WORDS, SCENE_ADJECTIVES, SCENE_PHRASES, SHAPE_NOUNS, compose_caption
from compsearch.mapping.errors import CompsearchError


def _mentions(caption: str, factor: str, value: str) -> bool:
    if factor == "scene":
        words = SCENE_PHRASES[value] + tuple(f"{a} background" for a in SCENE_ADJECTIVES[value])
    else:
        words = {"shape": SHAPE_NOUNS, "pattern": PATTERN_WORDS}.get(factor, {value: (value,)})[value]
    return any(word in caption for word in words)


@pytest.mark.parametrize("subset", [("shape",), ("colour", "scene"), ("pattern",), tuple(FACTORS)])
def test_caption_names_exactly_the_given_factors(subset: tuple[str, ...]) -> None:
    rng = np.random.default_rng(0)
    for index in range(30):
        item = draw_item(0, index)
        caption = compose_caption({name: item.factors()[name] for name in subset}, rng)
        for name in FACTORS:
            named = _mentions(caption, name, item.factors()[name])
            assert named == (name in subset), (caption, name)


def test_random_captions_vary_and_mix_full_and_partial() -> None:
    rng = np.random.default_rng(0)
    factors = draw_item(0, 0).factors()
    captions = [random_caption(factors, rng) for _ in range(200)]
    full = [c for c in captions if all(_mentions(c, n, v) for n, v in factors.items())]
    assert 0.3 < len(full) / len(captions) < 0.8
    assert len(set(captions)) > 40


def test_zero_shot_prompts_name_only_their_value() -> None:
    for factor, values in FACTORS.items():
        for value in values:
            prompts = zero_shot_prompts(factor, value)
            assert prompts and all(_mentions(p, factor, value) for p in prompts)
    with pytest.raises(CompsearchError):
        zero_shot_prompts("size", "big")
