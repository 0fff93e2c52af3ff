"""An index's image encoder as ONNX: an RGB image → every name's normalised query vector
(``full`` and each property), as the encoder rebuilt from the manifest gives them, without
torch."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from compsearch.mapping.identity import EncoderIdentity
from compsearch.mapping.onnx.pixels import PixelSpec
from compsearch.mapping.onnx.towers import IMAGE_TOWER, identity, open_tower

PIXELS = "pixels"  # float32 (1, 3, height, width); outputs: one normalised (1, d) vector per name
NAMES, PIXEL_SPEC = "names", "pixel_spec"


def image_identity(encoder: EncoderIdentity) -> dict[str, str]:
    return identity(encoder=json.dumps(asdict(encoder), sort_keys=True))


class OnnxImageTower:
    """``encode_images(images)`` through an exported image encoder (see :func:`open_image_tower`)."""

    def __init__(self, session: Any, names: list[str], pixels: PixelSpec) -> None:
        self.session = session
        self.names = names
        self.pixels = pixels

    def encode_images(self, images: list[PIL.Image.Image]) -> dict[str, np.ndarray]:
        """``{name: (len(images), d)}`` normalised float32 vectors (one image per run: the
        tower is exported for a batch of one)."""
        rows = [self.session.run(self.names, {PIXELS: self.pixels(image)[None]}) for image in images]
        return {name: np.concatenate([row[i] for row in rows]) for i, name in enumerate(self.names)}


def open_image_tower(folder: Path, encoder: EncoderIdentity) -> OnnxImageTower | None:
    """The image tower saved in ``folder`` for this encoder, or None (:func:`~.towers.open_tower`)."""
    opened = open_tower(folder / IMAGE_TOWER, image_identity(encoder))
    if opened is None:
        return None
    session, metadata = opened
    return OnnxImageTower(session, json.loads(metadata[NAMES]), PixelSpec.from_json(metadata[PIXEL_SPEC]))
