"""JPEG thumbnails, made once per image content and kept on disk.

A thumbnail is keyed by the sha256 of its original's bytes (recorded in the index), so it
is shared by every index holding the same file and can never be stale: a changed file is
another key. Files are written to a temporary name and renamed, so a reader never sees a
half-written thumbnail, and two requests making the same one at once both end well.
"""
from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from compsearch.mapping.cache import cache_dir
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import decode_image

DEFAULT_SIZE = 256
QUALITY = 85


class ThumbnailCache:
    def __init__(self, folder: str | Path | None = None, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self.folder = Path(folder).expanduser() if folder else cache_dir("thumbnails")
        self.folder = self.folder / str(size)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CompsearchError(f"cannot create the thumbnail cache {self.folder} ({error})",
                                  "pass a writable folder with --cache-dir") from error

    def path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.jpg"

    def get(self, sha256: str, original: Callable[[], bytes]) -> Path:
        """The thumbnail of the image whose bytes hash to ``sha256``; ``original`` gives those
        bytes, called only when the thumbnail is not on disk yet."""
        path = self.path(sha256)
        if path.is_file():
            return path
        image = decode_image(original(), "the indexed image", at_least=(self.size, self.size))
        image.thumbnail((self.size, self.size))
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", quality=QUALITY, optimize=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(encoded.getvalue())
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)  # only left after a failed write
        return path
