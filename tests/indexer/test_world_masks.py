"""World object masks: the exact segmentation ground truth of each render."""
from __future__ import annotations

import numpy as np
import pytest

from compsearch.indexer.world import SPLITS, render, render_mask
from compsearch.indexer.world.render import render_scene


@pytest.mark.parametrize("index", range(6))
def test_mask_covers_exactly_the_pixels_drawn_over_the_scene(index: int) -> None:
    item = SPLITS["test"].item(index)
    image, scene = render(item, 96).astype(int), np.clip(np.rint(render_scene(item, 96)), 0, 255).astype(int)
    mask = render_mask(item, 96)
    assert np.array_equal(image[~mask], scene[~mask])  # outside: the scene, untouched
    changed = np.any(image != scene, axis=-1)
    assert changed[mask].mean() > 0.9  # inside: the object (a pattern may share a scene pixel's colour)


def test_mask_is_a_pure_function_of_seed_and_index_at_any_resolution() -> None:
    item = SPLITS["train"].item(3)
    assert np.array_equal(render_mask(item, 64), render_mask(SPLITS["train"].item(3), 64))
    assert not np.array_equal(render_mask(item, 64), render_mask(SPLITS["train"].item(4), 64))
    assert render_mask(item, 64).mean() == pytest.approx(render_mask(item, 256).mean(), abs=0.02)
