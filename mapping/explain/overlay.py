"""Draw a heatmap over the model's view of the image: PNG with a colour bar and a caption.

Heat can be negative (a token pushing *against* the direction), so the colour map diverges
around zero: red for positive, blue for negative, and zero leaves the image untouched. The
scale is symmetric, ±max|heat|, and printed on the bar in the heat's own units (per pixel).
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont

MIN_SIDE = 320  # small model inputs (the 32 px fixture) are enlarged to stay legible
BAR_WIDTH, MARGIN = 16, 8
MAX_OPACITY = 0.7
NEGATIVE, POSITIVE = np.array([40, 90, 235.0]), np.array([230, 30, 30.0])
COMPONENTS_LISTED = 12
FONT_SIZE = 13


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _colours(signed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(colour (…, 3), opacity (…, 1)) of heat scaled to [-1, 1]."""
    colour = np.where(signed[..., None] >= 0, POSITIVE, NEGATIVE)
    return colour, MAX_OPACITY * np.abs(signed)[..., None]


def components_caption(components: Sequence[str], located: Sequence[str]) -> str:
    """Names the components (the first few of many), marking those with no place (MLPs, init)."""
    shown = [name if name in located else f"{name} (unlocated)" for name in components[:COMPONENTS_LISTED]]
    more = len(components) - len(shown)
    return f"{len(components)} components: " + ", ".join(shown) + (f", … {more} more" if more else "")


def render_overlay(view: PIL.Image.Image, pixel_heat: np.ndarray, title: str, caption: str) -> PIL.Image.Image:
    """``view`` (the model input as an image) with ``pixel_heat`` (H, W) over it, a colour bar
    on the right, ``title`` above and ``caption`` (wrapped) below."""
    scale = max(1, -(-MIN_SIDE // max(view.size)))
    size = (view.width * scale, view.height * scale)
    heat = np.kron(pixel_heat, np.ones((scale, scale)))  # nearest: keep the grid's cells visible
    limit = float(np.abs(heat).max()) or 1.0
    colour, opacity = _colours(heat / limit)
    image = np.asarray(view.convert("RGB").resize(size, PIL.Image.NEAREST), dtype=float)
    blended = PIL.Image.fromarray(np.rint(image * (1 - opacity) + colour * opacity).astype(np.uint8))

    font = _font()
    line_height = FONT_SIZE + 4
    lines = textwrap.wrap(caption, width=max(30, (size[0] + 80) // 7))
    label_width = 70
    canvas = PIL.Image.new("RGB", (size[0] + 3 * MARGIN + BAR_WIDTH + label_width,
                                   size[1] + 3 * MARGIN + line_height * (1 + len(lines))), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), title, fill="black", font=font)
    top = MARGIN * 2 + line_height
    canvas.paste(blended, (MARGIN, top))

    ramp = np.linspace(1.0, -1.0, size[1])[:, None].repeat(BAR_WIDTH, axis=1)
    bar_colour, bar_opacity = _colours(ramp)
    bar = PIL.Image.fromarray(np.rint(255 * (1 - bar_opacity) + bar_colour * bar_opacity).astype(np.uint8))
    bar_left = size[0] + 2 * MARGIN
    canvas.paste(bar, (bar_left, top))
    draw.rectangle([bar_left, top, bar_left + BAR_WIDTH - 1, top + size[1] - 1], outline="black")
    for fraction, value in ((0.0, limit), (0.5, 0.0), (1.0, -limit)):
        y = top + fraction * (size[1] - 1)
        draw.line([bar_left + BAR_WIDTH, y, bar_left + BAR_WIDTH + 4, y], fill="black")
        draw.text((bar_left + BAR_WIDTH + 6, y - FONT_SIZE / 2), f"{value:+.3g}", fill="black", font=font)
    for index, line in enumerate(lines):
        draw.text((MARGIN, top + size[1] + MARGIN + index * line_height), line, fill="black", font=font)
    return canvas
