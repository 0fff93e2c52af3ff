"""Reading image files into what the models take, with one clear error per bad file."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
import torch
from PIL import ImageOps, UnidentifiedImageError

from mapping.errors import ImageReadError

if TYPE_CHECKING:  # reading images needs no model library
    from mapping.models import LoadedModel


def read_image(path: str | Path) -> PIL.Image.Image:
    """The image at ``path`` as RGB, fully decoded, upright as its EXIF orientation says."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(
            f"image {path} {'is a folder' if path.is_dir() else 'does not exist'}",
            "give the path of an image file (JPEG, PNG, WebP, …)",
        )
    try:
        with PIL.Image.open(path) as image:
            image.load()  # decode now: truncation only shows when the pixels are read
            return ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError:
        raise ImageReadError(f"{path} is not an image PIL can read", "check the file type") from None
    except PIL.Image.DecompressionBombError as error:
        raise ImageReadError(
            f"{path} is too large to decode safely ({error})",
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted",
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated/corrupt data as OSError, and some broken headers as
        # SyntaxError or ValueError.
        raise ImageReadError(
            f"{path} is truncated or corrupt ({error})", "re-download or re-export the file"
        ) from error


def preprocess_batch(paths: Iterable[str | Path], loaded: LoadedModel) -> torch.Tensor:
    """The images at ``paths`` through the model's own eval transform, as one batch."""
    return torch.stack([loaded.preprocess(read_image(path)) for path in paths])
