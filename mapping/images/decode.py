"""Decoding one image file into RGB, with one clear ImageReadError per kind of bad file.

Reading the bytes and decoding them are separate steps so the loader hashes and decodes
the same bytes once, and uploads (bytes, no path) go through the very same decoder.

What every image becomes (:func:`to_rgb`), so that two files showing the same picture
give the same pixels whatever their format:

- upright as its EXIF orientation says (a broken EXIF block leaves it as stored);
- the first frame of an animation (GIF, WebP, APNG), the first page of a multi-page TIFF;
- 16-bit samples (modes ``I;16*``, and ``I``, which decoders use for 16-bit data) scaled
  from 0–65535 to 0–255, not clipped; floating-point samples (``F``) read as 0–1;
- transparency (an alpha channel, or a transparent palette entry or colour key)
  composited over :data:`ALPHA_BACKGROUND`;
- palette, 1-bit, grey, CMYK (PIL's conversion, no colour profile) and the rest converted
  by PIL.

Refused with a reason: a path that is not a regular file (a folder, a FIFO, a socket, a
device, a dangling link — checked before reading, so a FIFO never blocks), an empty file,
a file over an optional byte limit, a file that is not an image, a truncated or corrupt
one, and one whose header announces more pixels than the limit (never decoded).
"""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageOps, UnidentifiedImageError

from compsearch.mapping.errors import ImageReadError

ALPHA_BACKGROUND = (255, 255, 255)  # white: what transparent product shots and logos are drawn on
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Leading bytes of formats PIL reads: a file that starts like one but cannot be opened is
# damaged, not "not an image".
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
              b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
_NONBLOCKING = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, which has no FIFOs to block on
_READ_HINT = "give the path of an image file (JPEG, PNG, WebP, …)"


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is, for the message; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    return "is not a regular file"


def read_image_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of the image file at ``path``; refuses what is not a regular, non-empty
    file (the type is checked before opening, so a FIFO never blocks) and, with
    ``max_bytes``, a file larger than that."""
    path = Path(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        problem = "is a dangling symbolic link" if os.path.islink(path) else "does not exist"
        raise ImageReadError(f"{path} {problem}", _READ_HINT) from None
    except OSError as error:  # a loop of links, a name too long, a folder we may not enter
        raise ImageReadError(f"cannot read image {path} ({error.strerror})", _READ_HINT) from None
    kind = _file_kind(status.st_mode)
    if kind:
        raise ImageReadError(f"{path} {kind}", _READ_HINT)
    try:
        # Non-blocking and checked again on the open file: the path may have been swapped
        # for a FIFO since the stat.
        descriptor = os.open(path, os.O_RDONLY | _NONBLOCKING)
    except OSError as error:
        raise ImageReadError(f"cannot open image {path} ({error.strerror})", "check its permissions") from None
    with open(descriptor, "rb") as file:
        kind = _file_kind(os.fstat(descriptor).st_mode)
        if kind:
            raise ImageReadError(f"{path} {kind}", _READ_HINT)
        data = file.read() if max_bytes is None else file.read(max_bytes + 1)
    if not data:
        raise ImageReadError(f"{path} is empty (0 bytes)", "re-download or re-export the file")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageReadError(f"{path} is larger than the limit of {max_bytes:,} bytes",
                             "downscale or re-compress it")
    return data


def _eight_bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """A 16-bit (or 32-bit integer, or float) grey image as 8-bit ``L``, scaled, not clipped."""
    samples = np.asarray(image)  # uint16 in either byte order, int32 or float32
    if image.mode == "F":
        scaled = np.clip(np.nan_to_num(samples), 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(samples, 0, 65535) / 257.0  # 65535 / 257 = 255 exactly
    return PIL.Image.fromarray(np.rint(scaled).astype(np.uint8))


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` as 8-bit RGB, converted as the module docstring says (orientation aside)."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        image = _eight_bit(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        # convert("RGBA") turns a transparent palette entry or colour key into alpha too.
        foreground = image.convert("RGBA")
        background = PIL.Image.new("RGB", image.size, ALPHA_BACKGROUND)
        background.paste(foreground, mask=foreground.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def _unidentified(data: bytes, name: str) -> ImageReadError:
    kind = next((kind for signature, kind in SIGNATURES.items() if data.startswith(signature)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    if kind:
        return ImageReadError(f"{name} is a truncated or corrupt {kind} (its header cannot be read)",
                              "re-download or re-export the file")
    return ImageReadError(f"{name} is not an image (no image format PIL reads)", "check the file type")


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None,
                 at_least: tuple[int, int] | None = None) -> PIL.Image.Image:
    """``data`` decoded fully as RGB (see the module docstring), ``name`` used in errors.

    ``at_least``: a JPEG may be decoded at a reduced scale (1/2 … 1/8) that still keeps this
    size, several times faster (thumbnails); other formats decode in full.

    ``max_pixels`` (default: ``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million; lower it for
    uploads) is checked on the header before any pixel is decoded. PIL itself refuses
    anything over twice its ``MAX_IMAGE_PIXELS`` whatever ``max_pixels`` says.
    """
    limit = PIL.Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    too_large = "downscale it, or raise the pixel limit (max_pixels, PIL.Image.MAX_IMAGE_PIXELS) if the file is trusted"
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if limit is not None and width * height > limit:
                raise ImageReadError(
                    f"{name} is too large to decode safely ({width}×{height} = {width * height:,} pixels, "
                    f"limit {limit:,})", too_large,
                )
            if at_least is not None:
                image.draft("RGB", at_least)
            image.load()  # decode now: truncation only shows when the pixels are read
            ImageOps.exif_transpose(image, in_place=True)  # PIL ignores a broken EXIF block
            try:
                return to_rgb(image)
            except ValueError as error:  # a mode PIL cannot convert (e.g. premultiplied grey)
                raise ImageReadError(f"{name} has a colour mode ({image.mode}) that cannot be read as RGB ({error})",
                                     "re-export it as RGB") from None
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except PIL.Image.DecompressionBombError as error:
        raise ImageReadError(f"{name} is too large to decode safely ({error})", too_large) from None
    except MemoryError:
        raise ImageReadError(f"{name} is too large to decode in the memory available", "downscale it") from None
    except Exception as error:  # noqa: BLE001 - PIL's plugins report damage as OSError, SyntaxError,
        # ValueError, struct.error, IndexError, … depending on the format: all mean "damaged"
        problem = "truncated" if "truncated" in str(error).lower() else "corrupt"
        raise ImageReadError(f"{name} is {problem} ({type(error).__name__}: {error})",
                             "re-download or re-export the file") from None


def read_image(path: str | Path, max_bytes: int | None = None, max_pixels: int | None = None) -> PIL.Image.Image:
    """The image at ``path`` as RGB (see :func:`read_image_bytes` and :func:`decode_image`)."""
    return decode_image(read_image_bytes(path, max_bytes), str(path), max_pixels)
