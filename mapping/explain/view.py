"""The image as the model sees it: its eval transform cut into the geometric part (resize,
crop: PIL → PIL) and the tensor part (to tensor, normalise).

Heat lives on the model input's pixels, so overlays are drawn on the geometric part's
output, and ground-truth masks go through the very same resize and crop.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torchvision import transforms

from compsearch.mapping.errors import CompsearchError


@dataclass
class SplitTransform:
    geometric: Callable[[PIL.Image.Image], PIL.Image.Image]
    to_tensor: Callable[[PIL.Image.Image], torch.Tensor]

    def __call__(self, image: PIL.Image.Image) -> tuple[PIL.Image.Image, torch.Tensor]:
        """``(the model's view of image, the model input)``."""
        view = self.geometric(image.convert("RGB"))
        return view, self.to_tensor(view)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """A boolean (H, W) mask of the original image, carried to the model's view."""
        view = self.geometric(PIL.Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))
        return np.asarray(view.convert("L")) >= 128  # open_clip converts to RGB on the way


def split_transform(preprocess: Callable) -> SplitTransform:
    """Cut a torchvision ``Compose`` (timm's and open_clip's eval transforms) before its first
    to-tensor step."""
    steps = getattr(preprocess, "transforms", None)
    cut = next((index for index, step in enumerate(steps or []) if "ToTensor" in type(step).__name__), None)
    if cut is None:
        raise CompsearchError(
            f"cannot tell the geometric part of the preprocessing {type(preprocess).__name__}",
            "heatmaps need a torchvision Compose with a ToTensor step, as timm and open_clip build",
        )
    return SplitTransform(transforms.Compose(steps[:cut]), transforms.Compose(steps[cut:]))
