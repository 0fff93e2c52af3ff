"""The image files an index records, read by id only and only from inside the collection.

Nothing here takes a path from a request: an id is looked up in the index's shards, and the
file recorded for it is served only when

- its real path (every symlink resolved, now, not at indexing time) lies under a collection
  root, so a symlink in the collection pointing elsewhere is never followed out of it;
- it opens as a regular file without following a symlink in its last component;
- its bytes still hash to the sha256 recorded at indexing time, so what is served is exactly
  what was indexed, whatever was renamed or swapped on disk since (and a race between the
  checks above and the read gains nothing).

The collection roots are, unless given explicitly, one per indexing run: the folder a
folder source was, or the folder holding a list or table file (its ``source`` in the
manifest, see :func:`mapping.images.collection_root`). Files a list names outside that
folder are served only when ``roots`` names a folder above them (``compsearch serve --root``).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from compsearch.indexer.store import SHARDS, IndexStore
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import collection_root
from compsearch.search.query import check_id

ID_PATTERN = re.compile(r"[0-9]+")  # what an id in a URL may look like (no sign)


class ImageNotServedError(CompsearchError):
    """An id whose file this server will not send (see the module docstring), or no id at all.
    The message never names the file: a client learns nothing about the disk from it."""


@dataclass(frozen=True)
class ImageFile:
    id: int
    sha256: str  # as recorded when indexed: the file's identity (ETag, cache key)
    data: bytes
    media_type: str


def collection_roots(index_dir: str | Path, roots: Sequence[str | Path] | None = None) -> list[Path]:
    """The real paths of ``roots``, or else of the collection roots the index's runs record
    (see the module docstring; a run that records none — a list of paths given in code, an
    index built before sources recorded absolute paths — adds none: its files are refused
    until ``roots`` names their folder)."""
    if roots:
        return sorted({Path(os.path.realpath(Path(root).expanduser())) for root in roots})
    recorded = (collection_root(run.source) for run in IndexStore(index_dir).read_manifest().runs)
    return sorted({Path(os.path.realpath(root)) for root in recorded if root is not None})


def _refused(image_id: int) -> ImageNotServedError:
    return ImageNotServedError(f"image {image_id} has no file this server may send",
                               "its file is missing, changed since indexing, or outside the collection")


def _is_within(path: str, roots: Sequence[Path]) -> bool:
    return any(os.path.commonpath([path, str(root)]) == str(root) for root in roots)


def count_outside(index_dir: str | Path, roots: Sequence[Path]) -> int:
    """How many recorded files lie outside every root now (refused; said once at start-up)."""
    paths = IndexStore(index_dir).read_table(SHARDS, columns=["path"])
    return sum(1 for path in (paths.column("path").to_pylist() if paths.num_rows else [])
               if path is None or not _is_within(os.path.realpath(path), roots))


class CollectionFiles:
    """id → the indexed file's bytes, under the checks of the module docstring. ``record``
    gives an id's stored row (:meth:`search.SearchIndex.record`: path, sha256)."""

    def __init__(self, record: Callable[[int], dict[str, Any]], roots: Sequence[Path]) -> None:
        self.record = record
        self.roots = list(roots)

    def _real_path(self, image_id: int, row: dict[str, Any]) -> str:
        """The real path of ``row``'s file if it lies inside the collection now."""
        real_path = None if row["path"] is None else os.path.realpath(row["path"])
        if real_path is None or not _is_within(real_path, self.roots):
            raise _refused(image_id)
        return real_path

    def sha256(self, image_id: int) -> str:
        """The recorded sha256 of ``image_id``'s file (ImageNotServedError when it is not
        inside the collection: no URL, no thumbnail for it)."""
        row = self.record(image_id)
        self._real_path(image_id, row)
        return row["sha256"]

    def read(self, image_id: int) -> ImageFile:
        """The file of ``image_id``, checked; ImageNotServedError (→ 404) for anything else."""
        row = self.record(image_id)
        real_path, sha256 = self._real_path(image_id, row), row["sha256"]
        try:
            # No symlink as the last step; a FIFO swapped in must not block the read.
            descriptor = os.open(real_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            raise _refused(image_id) from None
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise _refused(image_id)
            data = file.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise _refused(image_id)
        return ImageFile(image_id, sha256, data, _media_type(data))


def _media_type(data: bytes) -> str:
    """From the bytes (what the indexer decoded), not the file name: a listed file may be
    named anything."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return PIL.Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        return "application/octet-stream"


def parse_id(text: str) -> int:
    """An id from a URL segment; anything but plain digits (``..``, ``%2F``, paths) → 404,
    digits beyond int64 → QueryError (400), as in a search body."""
    if not ID_PATTERN.fullmatch(text) or len(text) > 40:
        raise ImageNotServedError(f"no image with id {text[:40]!r}", "ids are the integers search results give")
    image_id = int(text)
    check_id(image_id)
    return image_id
