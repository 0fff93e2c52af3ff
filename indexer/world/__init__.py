"""A labelled synthetic world (shapes × colours × patterns × scenes) for offline measurement.

No real CLIP weights are reachable here (docs/architecture.md, Offline measurement); this world and the small CLIP trained
on it (:mod:`indexer.world.fixture_clip`) are the instrument that checks the text side.

The Parquet side (:mod:`.dataset`, pyarrow) and the captions load on first use
(:mod:`mapping.lazy`), so `compsearch world --help` lists the splits without them.
"""
from compsearch.indexer.world.factors import FACTORS, HELDOUT_PAIRS, Holdout, WorldItem, draw_item, is_heldout
from compsearch.indexer.world.render import render, render_image, render_mask
from compsearch.indexer.world.splits import SPLITS, Split, get_split
from compsearch.mapping.lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "canonical_caption": "captions", "random_caption": "captions", "zero_shot_prompts": "captions",
    "read_labels": "dataset", "write_split": "dataset",
})

__all__ = [
    "FACTORS", "HELDOUT_PAIRS", "Holdout", "SPLITS", "Split", "WorldItem", "canonical_caption",
    "draw_item", "get_split", "is_heldout", "random_caption", "read_labels", "render",
    "render_image", "render_mask", "write_split", "zero_shot_prompts",
]
