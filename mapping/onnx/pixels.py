"""A model's eval transform (resize the shorter side, centre crop, scale to [0, 1], normalise)
done with PIL and NumPy, equal to the torchvision transform it was read from (which
:mod:`.export` checks before it writes a tower), so an image query needs no torch."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import PIL.Image


@dataclass(frozen=True)
class PixelSpec:
    """What the transform does to an RGB image; stored as JSON in the image tower."""

    resize: int  # the shorter side's length after resizing
    interpolation: str  # a PIL resampling name: BICUBIC, BILINEAR, …
    crop: tuple[int, int]  # (height, width) of the centre crop, at most ``resize``
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PixelSpec:
        values = json.loads(text)
        return cls(values["resize"], values["interpolation"], tuple(values["crop"]), tuple(values["mean"]),
                   tuple(values["std"]))

    def __call__(self, image: PIL.Image.Image) -> np.ndarray:
        """``(3, height, width)`` float32 pixels of an RGB image, as torchvision makes them."""
        width, height = image.size
        short, long = sorted((width, height))
        resized_long = int(self.resize * long / short)  # torchvision's rounding (down)
        size = (self.resize, resized_long) if width <= height else (resized_long, self.resize)
        if size != (width, height):
            image = image.resize(size, PIL.Image.Resampling[self.interpolation])
        crop_height, crop_width = self.crop
        top, left = int(round((size[1] - crop_height) / 2.0)), int(round((size[0] - crop_width) / 2.0))
        image = image.crop((left, top, left + crop_width, top + crop_height))
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        mean, std = (np.asarray(values, dtype=np.float32)[:, None, None] for values in (self.mean, self.std))
        return (pixels - mean) / std
