"""Decoding one image file into RGB, with one clear ImageReadError per kind of bad file.

Reading the bytes and decoding them are separate steps so the loader hashes and decodes
the same bytes once, and uploads (bytes, no path) go through the very same decoder.
"""
from __future__ import annotations

import io
from pathlib import Path

import PIL.Image
from PIL import ImageOps, UnidentifiedImageError

from mapping.errors import ImageReadError


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of the image file at ``path``; refuses what is not a regular file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(
            f"image {path} {'is a folder' if path.is_dir() else 'does not exist'}",
            "give the path of an image file (JPEG, PNG, WebP, …)",
        )
    return path.read_bytes()


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None,
                 at_least: tuple[int, int] | None = None) -> PIL.Image.Image:
    """``data`` decoded as RGB, fully, upright as its EXIF orientation says.

    ``max_pixels`` refuses larger images from their header, before any pixel is decoded
    (untrusted uploads); PIL's own decompression-bomb limit applies either way.
    ``at_least``: a JPEG may be decoded at a reduced scale (1/2 … 1/8) that still keeps this
    size, several times faster (thumbnails); other formats decode in full.
    """
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageReadError(f"{name} has {image.width}×{image.height} pixels, more than the {max_pixels} allowed",
                                     "downscale it and try again")
            if at_least is not None:
                image.draft("RGB", at_least)
            image.load()  # decode now: truncation only shows when the pixels are read
            return ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError:
        raise ImageReadError(f"{name} is not an image PIL can read", "check the file type") from None
    except PIL.Image.DecompressionBombError as error:
        raise ImageReadError(
            f"{name} is too large to decode safely ({error})",
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted",
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated/corrupt data as OSError, and some broken headers as
        # SyntaxError or ValueError.
        raise ImageReadError(
            f"{name} is truncated or corrupt ({error})", "re-download or re-export the file"
        ) from error


def read_image(path: str | Path) -> PIL.Image.Image:
    """The image at ``path`` as RGB (see :func:`decode_image`)."""
    return decode_image(read_image_bytes(path), str(path))
