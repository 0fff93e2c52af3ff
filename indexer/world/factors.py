"""The labelled synthetic world: its factor vocabularies and how one item's factors are drawn.

Every world image is one shape on one scene. Its four named factors (shape, colour,
pattern, scene) are drawn independently and uniformly; its jitter (size, position,
rotation) is continuous. All of it comes from a numpy Generator seeded by
``(seed, index)`` alone, so an item is reproducible without rendering its neighbours and
no global RNG is touched.

The compositional split holds out a documented set of factor *pairs*
(:data:`HELDOUT_PAIRS`): every single factor value is seen in training, but these
combinations never are, so a test on them measures composition rather than memory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

from compsearch.mapping.errors import CompsearchError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
# Saturated, well separated colours; black is kept for the shape outline.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 40),
    "green": (40, 165, 55),
    "blue": (30, 75, 215),
    "purple": (130, 45, 175),
    "pink": (250, 135, 200),
    "white": (248, 248, 248),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "noisy")
SCENES: tuple[str, ...] = ("plain", "beach", "forest", "city", "water")

FACTORS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "pattern": PATTERNS,
    "scene": SCENES,
}

# Held out of training, present in the compositional split. Each shape misses one colour
# and four patterns miss one scene, so no single value is ever unseen.
HELDOUT_PAIRS: dict[tuple[str, str], frozenset[tuple[str, str]]] = {
    ("shape", "colour"): frozenset({
        ("circle", "red"), ("square", "blue"), ("triangle", "yellow"),
        ("star", "green"), ("heart", "purple"), ("cross", "orange"),
    }),
    ("pattern", "scene"): frozenset({
        ("striped", "beach"), ("dotted", "forest"), ("checkered", "city"), ("noisy", "water"),
    }),
}

# Jitter ranges, as fractions of the image side (radius, centre offset) and degrees.
RADIUS_RANGE = (0.30, 0.38)
CENTRE_OFFSET = 0.07
ROTATION_DEGREES = 20.0


class Holdout(str, Enum):
    """Which items a split may contain with respect to :data:`HELDOUT_PAIRS`."""

    EXCLUDE = "exclude"  # training and the seed split: no held-out pair
    ONLY = "only"  # the compositional split: at least one held-out pair
    ANY = "any"  # no constraint


@dataclass(frozen=True)
class WorldItem:
    """One world image's labels: its named factors and its continuous jitter."""

    seed: int
    index: int
    shape: str
    colour: str
    pattern: str
    scene: str
    radius: float  # fraction of the image side
    centre_x: float  # fraction of the image side
    centre_y: float
    rotation: float  # degrees, counter-clockwise
    scene_seed: int  # seeds the scene's and the noisy pattern's own texture

    def factors(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FACTORS}

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def is_heldout(factors: dict[str, str]) -> bool:
    return any((factors[a], factors[b]) in pairs for (a, b), pairs in HELDOUT_PAIRS.items())


def _accepts(factors: dict[str, str], holdout: Holdout) -> bool:
    if holdout is Holdout.ANY:
        return True
    return is_heldout(factors) == (holdout is Holdout.ONLY)


def draw_item(seed: int, index: int, holdout: Holdout = Holdout.ANY) -> WorldItem:
    """The item ``index`` of world ``seed``; factors are redrawn until ``holdout`` accepts them."""
    if seed < 0 or index < 0:
        raise CompsearchError(
            f"world seed and index must be non-negative, got seed={seed}, index={index}",
            "pass a seed and an index >= 0",
        )
    rng = np.random.default_rng([seed, index])
    while True:
        factors = {name: values[rng.integers(len(values))] for name, values in FACTORS.items()}
        if _accepts(factors, Holdout(holdout)):
            break
    return WorldItem(
        seed=seed,
        index=index,
        **factors,
        radius=float(rng.uniform(*RADIUS_RANGE)),
        centre_x=float(0.5 + rng.uniform(-CENTRE_OFFSET, CENTRE_OFFSET)),
        centre_y=float(0.5 + rng.uniform(-CENTRE_OFFSET, CENTRE_OFFSET)),
        rotation=float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES)),
        scene_seed=int(rng.integers(2**31)),
    )
