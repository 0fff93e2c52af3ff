"""An awkward image corpus for tests: every kind of good file that must decode, and every
kind of broken one that must be skipped with its reason.

    from tests.corpus import write_awkward_corpus
    good, bad = write_awkward_corpus(tmp_path / "corpus")

``good`` maps each good file's path (relative to the folder, as a ``FolderSource`` keys
it) to its displayed ``(width, height)``; ``bad`` maps each broken entry's path to a
substring of the reason :mod:`mapping.images` gives for it. Files without an image suffix
(``notes.txt``) are in neither: a folder source does not list them. Kinds that the
platform cannot make (a FIFO or socket on Windows, a socket whose path is too long for
``AF_UNIX``) are left out, so iterate the returned dicts rather than fixed names.

The pixel content of some good files is fixed so tests can check it:
- ``gray16.png`` / ``gray16_big_endian.tif`` / ``gray32.tif``: a horizontal ramp over the
  full 16-bit range (0 → 65535 left to right), :data:`RAMP_WIDTH` wide; ``float.tif`` the
  same ramp as floats 0 → 1;
- ``alpha.png``: :data:`ALPHA_COLOUR` at alpha :data:`ALPHA`; ``palette_transparent.png``
  and ``grey_alpha.png``: fully transparent;
- the animated and multi-page files: first frame :data:`FIRST_FRAME`, later ones other colours;
- ``cmyk.jpg``: pure cyan; ``rotated.jpg``: stored 40×30 with EXIF orientation 6
  (displayed 30×40), its stored top row red, so the displayed right column is red.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image

RAMP_WIDTH = 256
ALPHA_COLOUR = (255, 0, 0)
ALPHA = 128
FIRST_FRAME = (255, 0, 0)
LATER_FRAMES = ((0, 255, 0), (0, 0, 255))
BOMB_SIDE = 100_000  # 10^10 pixels announced by a 70-byte file


def ramp16() -> np.ndarray:
    """(8, RAMP_WIDTH) uint16: 0 → 65535 left to right."""
    return np.repeat(np.linspace(0, 65535, RAMP_WIDTH).round().astype(np.uint16)[None, :], 8, axis=0)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid-looking PNG whose header announces ``side``² 1-bit pixels (and holds one row)."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (1 + side // 8))) + _png_chunk(b"IEND", b""))


def _noise(size: tuple[int, int]) -> PIL.Image.Image:
    return PIL.Image.effect_noise(size, 60).convert("RGB")


def _frames() -> list[PIL.Image.Image]:
    return [PIL.Image.new("RGB", (24, 16), colour) for colour in (FIRST_FRAME, *LATER_FRAMES)]


def _write_good(folder: Path) -> dict[str, tuple[int, int]]:
    good: dict[str, tuple[int, int]] = {}

    def save(name: str, image: PIL.Image.Image, size: tuple[int, int] | None = None, **options) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **options)
        good[name] = size or image.size

    ramp = ramp16()
    save("gray16.png", PIL.Image.fromarray(ramp))  # mode I;16
    save("gray16_big_endian.tif", PIL.Image.frombytes("I;16B", ramp.shape[::-1], ramp.astype(">u2").tobytes()))
    save("gray32.tif", PIL.Image.fromarray(ramp.astype(np.int32)))  # mode I
    save("float.tif", PIL.Image.fromarray((ramp / 65535.0).astype(np.float32)))  # mode F
    save("alpha.png", PIL.Image.new("RGBA", (20, 10), (*ALPHA_COLOUR, ALPHA)))
    save("grey_alpha.png", PIL.Image.new("LA", (20, 10), (0, 0)))
    palette = PIL.Image.new("P", (20, 10), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255])
    save("palette_transparent.png", palette, transparency=0)
    palette_opaque = PIL.Image.new("P", (20, 10), 1)
    palette_opaque.putpalette([0, 0, 0, 0, 0, 255])
    save("palette.png", palette_opaque)
    save("cmyk.jpg", PIL.Image.new("CMYK", (20, 10), (255, 0, 0, 0)), quality=95)
    save("bilevel.png", PIL.Image.new("1", (20, 10), 1))
    save("bilevel_group4.tif", PIL.Image.new("1", (20, 10), 0), compression="group4")
    first, *later = _frames()
    for name in ("animated.gif", "animated.webp", "animated.png"):
        save(name, first, save_all=True, append_images=later, duration=100, loop=0)
    save("multipage.tif", first, save_all=True, append_images=later)
    rotated = PIL.Image.new("RGB", (40, 30), (0, 0, 255))
    rotated.paste((255, 0, 0), (0, 0, 40, 3))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    save("rotated.jpg", rotated, size=(30, 40), exif=exif.tobytes(), quality=95)
    save("UPPER.JPG", _noise((32, 24)))
    save("photo.webp", _noise((30, 20)))
    save("photo.bmp", _noise((30, 20)))
    save("nested/deeper/photo.jpeg", _noise((48, 32)))
    duplicate = _noise((28, 28))
    save("duplicate_a.png", duplicate)
    save("nested/duplicate_b.png", duplicate)  # the same bytes: PNG encoding is deterministic
    os.symlink("UPPER.JPG", folder / "link_to_upper.jpg")
    good["link_to_upper.jpg"] = good["UPPER.JPG"]
    return good


def _write_bad(folder: Path) -> dict[str, str]:
    bad: dict[str, str] = {}
    (folder / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "is empty"
    whole = io.BytesIO()
    _noise((256, 256)).save(whole, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    bad["truncated.jpg"] = "is truncated"
    (folder / "truncated_header.png").write_bytes(bomb_png(16)[:30])
    bad["truncated_header.png"] = "truncated or corrupt PNG"
    corrupt = folder / "corrupt.png"
    _noise((64, 64)).save(corrupt)
    damaged = bytearray(corrupt.read_bytes())
    damaged[200:260] = b"x" * 60  # inside the compressed pixels
    corrupt.write_bytes(bytes(damaged))
    bad["corrupt.png"] = "is corrupt"
    (folder / "not_an_image.jpg").write_text("these are words, not pixels\n")
    bad["not_an_image.jpg"] = "is not an image"
    (folder / "bomb.png").write_bytes(bomb_png())
    bad["bomb.png"] = "too large"
    (folder / "folder.jpg").mkdir()
    (folder / "folder.jpg" / "inside.jpg").write_text("a folder with an image name is not descended into")
    bad["folder.jpg"] = "is a folder"
    os.symlink("missing-target.jpg", folder / "dangling.jpg")
    bad["dangling.jpg"] = "dangling symbolic link"
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.png")
        bad["pipe.png"] = "is a FIFO"
    socket_path = folder / "socket.png"
    if hasattr(socket, "AF_UNIX") and len(os.fsencode(socket_path)) < 100:  # AF_UNIX paths are short
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(os.fspath(socket_path))  # the file stays after the socket closes
        bad["socket.png"] = "is a socket"
    return bad


def write_awkward_corpus(folder: str | Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Write the corpus into ``folder`` (created; should be empty) and return ``(good, bad)``
    as the module docstring describes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not listed: no image suffix\n")
    return _write_good(folder), _write_bad(folder)
