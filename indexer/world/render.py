"""Draw a :class:`WorldItem` at any resolution.

Geometry is in fractions of the image side, so one item renders the same picture at every
resolution. Polygons and scene furniture are drawn with PIL (C speed); patterns are numpy
masks in the shape's own rotated frame, scaled with the shape, so stripes and dots turn
and grow with it. Patterns are deliberately coarse (three to four periods across the
shape) so they survive the downsizing a small CLIP applies.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from compsearch.indexer.world.factors import COLOURS, WorldItem
from compsearch.mapping.errors import CompsearchError

OUTLINE_RGB = (15, 15, 15)  # a dark rim keeps the silhouette visible on same-coloured scenes
# The rim's width as a share of the side: 1.5 px at the fixture CLIP's 48-px input, so a white
# shape on a pale scene (or a green one in a forest) keeps its outline there.
OUTLINE_WIDTH = 1 / 32
SECONDARY_SHADE = 0.35  # a pattern's second colour is a darker shade of the shape's colour
MIN_RESOLUTION = 16

# Pattern periods, in units of the shape's radius.
STRIPE_PERIOD = 0.55
DOT_PERIOD = 0.6
DOT_RADIUS = 0.17
CHECKER_PERIOD = 0.5
NOISE_GRID = 8


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (n, 2) of ``shape`` around the origin, sized so all shapes look equally big."""
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        return 0.9 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "square":
        return 0.8 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if shape == "triangle":
        angles = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return 1.1 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "heart":
        # The classic heart curve (lobes up, point down), its box centred on the origin. It
        # replaced a hexagon, which differed from the circle by about a pixel at the fixture
        # CLIP's input.
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        y -= (y.max() + y.min()) / 2
        return 0.95 / 16 * np.stack([x, y], axis=1)
    if shape == "star":
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.1, 0.48)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "cross":
        a, b = 0.95, 0.34
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                         [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
    raise CompsearchError(f"unknown world shape {shape!r}", "use one of indexer.world.factors.SHAPES")


def _rotation(degrees: float) -> np.ndarray:
    theta = math.radians(degrees)
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def _shape_masks(item: WorldItem, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(interior, outline) boolean masks of the item's shape."""
    scale = item.radius * size
    vertices = _unit_polygon(item.shape) @ _rotation(item.rotation).T * scale
    vertices += np.array([item.centre_x, item.centre_y]) * size
    points = [tuple(p) for p in vertices.tolist()]
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(points, fill=255)
    draw.line(points + points[:1], fill=128, width=max(1, round(size * OUTLINE_WIDTH)), joint="curve")
    pixels = np.asarray(canvas)
    return pixels == 255, pixels == 128


def _local_coordinates(item: WorldItem, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the shape's rotated frame, in units of its radius."""
    axis = (np.arange(size) + 0.5) / size
    dx = (axis[None, :] - item.centre_x) / item.radius
    dy = (axis[:, None] - item.centre_y) / item.radius
    inverse = _rotation(-item.rotation)
    u = inverse[0, 0] * dx + inverse[0, 1] * dy
    v = inverse[1, 0] * dx + inverse[1, 1] * dy
    return u, v


def _bilinear(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``grid`` at fractional coordinates (clamped to its edges)."""
    n = grid.shape[0] - 1
    x, y = np.clip(x, 0, n - 1e-6), np.clip(y, 0, n - 1e-6)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def pattern_mask(item: WorldItem, size: int) -> np.ndarray:
    """Where the pattern's second colour goes (before clipping to the shape)."""
    u, v = _local_coordinates(item, size)
    if item.pattern == "plain":
        return np.zeros((size, size), dtype=bool)
    if item.pattern == "striped":
        return (u / STRIPE_PERIOD) % 1.0 < 0.5
    if item.pattern == "dotted":
        du = (u / DOT_PERIOD) % 1.0 - 0.5
        dv = (v / DOT_PERIOD) % 1.0 - 0.5
        return du**2 + dv**2 < (DOT_RADIUS / DOT_PERIOD) ** 2
    if item.pattern == "checkered":
        return (np.floor(u / CHECKER_PERIOD) + np.floor(v / CHECKER_PERIOD)) % 2 == 0
    if item.pattern == "noisy":
        grid = np.random.default_rng([item.scene_seed, 1]).random((NOISE_GRID, NOISE_GRID))
        span = (NOISE_GRID - 1) / 2.4  # the grid covers [-1.2, 1.2] radii
        field = _bilinear(grid, (u + 1.2) * span, (v + 1.2) * span)
        return field > np.median(grid)
    raise CompsearchError(f"unknown world pattern {item.pattern!r}", "use one of indexer.world.factors.PATTERNS")


def _vertical_gradient(size: int, top: tuple[int, ...], bottom: tuple[int, ...]) -> np.ndarray:
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    column = (1 - t) * np.array(top, dtype=float) + t * np.array(bottom, dtype=float)
    return np.broadcast_to(column, (size, size, 3)).copy()


def _scene_plain(rng: np.random.Generator, size: int) -> np.ndarray:
    tone = rng.uniform(195, 230) + rng.uniform(-8, 8, size=3)
    return np.broadcast_to(tone, (size, size, 3)).copy()


def _scene_beach(rng: np.random.Generator, size: int) -> np.ndarray:
    horizon = int(size * rng.uniform(0.4, 0.55))
    sky = _vertical_gradient(size, (110, 175, 235), (190, 225, 250))
    sand = _vertical_gradient(size, (235, 210, 160), (205, 175, 120))
    return np.concatenate([sky[:horizon], sand[horizon:]], axis=0)


def _scene_forest(rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = Image.new("RGB", (size, size), (30, 75, 35))
    draw = ImageDraw.Draw(canvas)
    for _ in range(5):
        x, width = rng.uniform(0, 1), rng.uniform(0.03, 0.06)
        draw.rectangle([(x - width) * size, 0, (x + width) * size, size], fill=(85, 55, 30))
    for _ in range(40):
        x, y, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.14)
        green = (int(rng.uniform(20, 70)), int(rng.uniform(95, 160)), int(rng.uniform(20, 60)))
        draw.ellipse([(x - r) * size, (y - r) * size, (x + r) * size, (y + r) * size], fill=green)
    return np.asarray(canvas, dtype=float)


def _scene_city(rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = Image.new("RGB", (size, size), (200, 205, 212))
    draw = ImageDraw.Draw(canvas)
    x = -rng.uniform(0, 0.1)
    while x < 1:
        width, height = rng.uniform(0.12, 0.25), rng.uniform(0.35, 0.9)
        grey = int(rng.uniform(85, 150))
        left, top = x * size, (1 - height) * size
        draw.rectangle([left, top, (x + width) * size, size], fill=(grey, grey, grey + 8))
        window = 0.035 * size
        for wy in np.arange(top + window, size - window, 2.5 * window):
            for wx in np.arange(left + window, (x + width) * size - window, 2.5 * window):
                draw.rectangle([wx, wy, wx + window, wy + window], fill=(60, 60, 70))
        x += width
    return np.asarray(canvas, dtype=float)


def _scene_water(rng: np.random.Generator, size: int) -> np.ndarray:
    axis = (np.arange(size) + 0.5) / size
    phase, waves = rng.uniform(0, 2 * math.pi), rng.uniform(5, 8)
    height = axis[:, None] * waves + 0.25 * np.sin(2 * math.pi * 2 * axis[None, :] + phase)
    crest = (np.sin(2 * math.pi * height) > 0.75)[..., None]
    base = _vertical_gradient(size, (25, 85, 150), (15, 55, 115))
    return np.where(crest, np.array([90, 150, 215], dtype=float), base)


_SCENES = {
    "plain": _scene_plain,
    "beach": _scene_beach,
    "forest": _scene_forest,
    "city": _scene_city,
    "water": _scene_water,
}


def render_scene(item: WorldItem, size: int) -> np.ndarray:
    """The background alone, (size, size, 3) float."""
    if item.scene not in _SCENES:
        raise CompsearchError(f"unknown world scene {item.scene!r}", "use one of indexer.world.factors.SCENES")
    return _SCENES[item.scene](np.random.default_rng([item.scene_seed, 0]), size)


def render(item: WorldItem, size: int = 224) -> np.ndarray:
    """The item's image as a (size, size, 3) uint8 array."""
    if size < MIN_RESOLUTION:
        raise CompsearchError(f"world resolution {size} is too small", f"use at least {MIN_RESOLUTION} pixels")
    image = render_scene(item, size)
    interior, outline = _shape_masks(item, size)
    colour = np.array(COLOURS[item.colour], dtype=float)
    fill = np.where(pattern_mask(item, size)[..., None], colour * SECONDARY_SHADE, colour)
    image = np.where(interior[..., None], fill, image)
    image[outline] = OUTLINE_RGB
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_image(item: WorldItem, size: int = 224) -> Image.Image:
    return Image.fromarray(render(item, size), mode="RGB")


def render_mask(item: WorldItem, size: int = 224) -> np.ndarray:
    """Where the item's object is, (size, size) bool: its interior and outline exactly as
    :func:`render` draws them, so it is the segmentation ground truth of that image."""
    interior, outline = _shape_masks(item, size)
    return interior | outline
