"""A labelled synthetic world (shapes × colours × patterns × scenes) for offline measurement.

No real CLIP weights are reachable here (DESIGN §7); this world and the small CLIP trained
on it (:mod:`indexer.world.fixture_clip`) are the instrument that checks the text side.
"""
from indexer.world.captions import canonical_caption, random_caption, zero_shot_prompts
from indexer.world.dataset import read_labels, write_split
from indexer.world.factors import FACTORS, HELDOUT_PAIRS, Holdout, WorldItem, draw_item, is_heldout
from indexer.world.render import render, render_image, render_mask
from indexer.world.splits import SPLITS, Split, get_split

__all__ = [
    "FACTORS", "HELDOUT_PAIRS", "Holdout", "SPLITS", "Split", "WorldItem", "canonical_caption",
    "draw_item", "get_split", "is_heldout", "random_caption", "read_labels", "render",
    "render_image", "render_mask", "write_split", "zero_shot_prompts",
]
