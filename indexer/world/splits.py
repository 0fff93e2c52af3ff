"""Named splits of the world: disjoint by seed, and compositional by held-out factor pairs.

An item is identified by ``(seed, index)``; splits with different seeds therefore never
share an item. ``train`` and ``test`` exclude the pairs of :data:`HELDOUT_PAIRS` (``test``
is the seed split: same distribution, unseen renders); ``compositional`` contains only
items with at least one held-out pair.
"""
from __future__ import annotations

from dataclasses import dataclass

from compsearch.indexer.world.factors import Holdout, WorldItem, draw_item
from compsearch.mapping.errors import CompsearchError


@dataclass(frozen=True)
class Split:
    name: str
    seed: int
    holdout: Holdout

    def item(self, index: int) -> WorldItem:
        return draw_item(self.seed, index, self.holdout)

    def items(self, count: int, start: int = 0) -> list[WorldItem]:
        return [self.item(index) for index in range(start, start + count)]


SPLITS: dict[str, Split] = {
    split.name: split
    for split in (
        Split("train", seed=0, holdout=Holdout.EXCLUDE),
        Split("test", seed=1, holdout=Holdout.EXCLUDE),
        Split("compositional", seed=2, holdout=Holdout.ONLY),
    )
}


def get_split(name: str, seed: int | None = None) -> Split:
    """A standard split by name, optionally with its seed replaced (a fresh, disjoint draw)."""
    if name not in SPLITS:
        raise CompsearchError(f"unknown world split {name!r}", f"use one of {', '.join(SPLITS)}")
    split = SPLITS[name]
    return split if seed is None else Split(split.name, seed, split.holdout)
