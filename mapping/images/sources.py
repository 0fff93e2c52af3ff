"""Image sources: where a collection's images come from, listed as a stream of records.

A source lists :class:`ImageRecord`s in a stable order without holding the whole list
(a folder is walked directory by directory, a Parquet file read batch by batch), so a
listing can reach 1e9 images. ``position`` (the place in that order) is what partitions
and resumable jobs key on: it is stable while the source is unchanged.

Kinds (``open_source`` picks one from a path):
- a folder, walked recursively in sorted order (files with an image suffix, any case);
- a Parquet or CSV file with a ``path`` column (or ``file``, as the world splits write),
  every other column carried along as metadata; relative paths are relative to the file;
- any other file: a list of paths, one per line (``#`` comments and blank lines ignored);
- a list or tuple of paths (:class:`PathListSource`: probe sets chosen by code);
- :class:`MemorySource`: images already in memory (renders, uploads), keyed by name.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import PIL.Image

from compsearch.mapping.errors import CompsearchError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TABLE_SUFFIXES = frozenset({".parquet", ".csv"})
PATH_COLUMNS = ("path", "file")


@dataclass
class ImageRecord:
    """One listed image: where it is and what the listing says about it."""

    position: int  # place in the source's listing
    key: str  # the path as listed (relative to the source's root), or an in-memory name
    path: Path | None  # the file to read; None for in-memory images
    metadata: dict[str, Any] = field(default_factory=dict)
    image: PIL.Image.Image | None = None  # in-memory images only
    problem: str | None = None  # why it cannot be read, known when listed (the reader skips it with this)


def printable(name: str) -> str:
    """``name`` as valid UTF-8 text: the bytes of a surrogate-escaped file name that is not
    UTF-8 shown as ``\\xNN`` (Parquet and JSON take only valid UTF-8)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def listed(position: int, key: str, path: Path, metadata: dict[str, Any] | None = None) -> ImageRecord:
    """The record of a listed file; a name that is not valid UTF-8 is listed with that problem,
    so it is skipped with its reason instead of stopping the collection where it is stored."""
    record = ImageRecord(position, key, path, metadata or {})
    if printable(key) != key:
        record.problem = f"{printable(key)}: the file name is not valid UTF-8 (rename the file to index it)"
    return record


class ImageSource(Protocol):
    """A stable, streamed listing of images."""

    description: str

    def records(self) -> Iterator[ImageRecord]: ...


def has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def records_between(source: ImageSource, start: int, stop: int) -> Iterator[ImageRecord]:
    """A listing's positions ``start`` … ``stop - 1``: read directly where the source holds its
    records by position (a plan's :class:`~mapping.images.listing.CompactListing`), else by
    listing up to them."""
    direct = getattr(source, "records_between", None)
    return direct(start, stop) if direct is not None else islice(source.records(), start, stop)


class FolderSource:
    """Every file with an image suffix under ``root``, depth first in sorted name order.

    Symlinked folders are not followed (no loops, nothing outside the collection); an
    entry with an image suffix is listed whatever it is (a folder, a FIFO, a dangling
    link), so the reader can skip it with its reason instead of it silently vanishing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()  # absolute: the description names the root
        if not self.root.is_dir():
            raise CompsearchError(f"image folder {self.root} does not exist", "pass a folder of image files")
        self.description = f"folder {self.root}"

    def records(self) -> Iterator[ImageRecord]:
        for position, (relative, problem) in enumerate(self._walk("")):
            record = listed(position, relative, self.root / relative)
            record.problem = problem or record.problem
            yield record

    def _walk(self, relative: str) -> Iterator[tuple[str, str | None]]:
        """(path, None) per image file; (folder, why) for a folder that cannot be listed, so it
        is recorded among the skipped instead of its files vanishing silently."""
        try:
            with os.scandir(self.root / relative) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            yield relative or ".", f"{printable(relative or '.')}: the folder cannot be listed ({error.strerror})"
            return
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if has_image_suffix(entry.name):
                yield name, None
            elif entry.is_dir(follow_symlinks=False):
                yield from self._walk(name)


class ListFileSource:
    """Paths listed one per line in a text file (relative ones are relative to the file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self.root = self.path.parent
        self.description = f"list {self.path}"

    def records(self) -> Iterator[ImageRecord]:
        position = 0
        # Any bytes are a file name: not UTF-8 ones are surrogate-escaped (and skipped with
        # their reason); only the line end is stripped, since spaces may belong to a name.
        with open(self.path, encoding="utf-8", errors="surrogateescape", newline="") as lines:
            for line in lines:
                entry = line.removesuffix("\n").removesuffix("\r")
                if entry.strip() and not entry.lstrip().startswith("#"):
                    yield listed(position, entry, self.root / Path(entry).expanduser())
                    position += 1


class TableSource:
    """Rows of a Parquet or CSV file: a path column, other columns carried as metadata."""

    def __init__(self, path: str | Path, path_column: str | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        self.root = self.path.parent
        columns = self._column_names()
        candidates = (path_column,) if path_column else PATH_COLUMNS
        found = [column for column in candidates if column in columns]
        if not found:
            raise CompsearchError(
                f"{self.path} has no {' or '.join(repr(c) for c in candidates)} column (columns: {', '.join(columns)})",
                "name the image paths' column `path`",
            )
        self.path_column = found[0]
        self.description = f"table {self.path} (column {self.path_column})"

    def _column_names(self) -> list[str]:
        try:
            if self.path.suffix.lower() == ".parquet":
                import pyarrow.parquet as pq

                return pq.read_schema(self.path).names
            return next(self._csv_batches()).schema.names
        except (OSError, ValueError, StopIteration) as error:
            raise CompsearchError(f"cannot read the table {self.path} ({error})",
                                  "pass a Parquet or CSV file with a `path` column") from error

    def _csv_batches(self) -> Iterator:
        import pyarrow.csv as csv

        reader = csv.open_csv(self.path)
        for batch in reader:
            yield batch

    def _batches(self) -> Iterator:
        if self.path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(self.path).iter_batches(batch_size=8192)
        else:
            yield from self._csv_batches()

    def records(self) -> Iterator[ImageRecord]:
        position = 0
        for batch in self._batches():
            for row in batch.to_pylist():
                entry = row.pop(self.path_column)
                if entry is None or str(entry).strip() == "":
                    continue
                entry = str(entry)
                yield listed(position, entry, self.root / Path(entry).expanduser(), row)
                position += 1


class PathListSource:
    """Paths given in a list (probe sets chosen by code), keyed by the path as given."""

    def __init__(self, paths: Sequence[str | Path], description: str | None = None) -> None:
        self.paths = [Path(path).expanduser() for path in paths]
        self.description = description or f"{len(self.paths)} listed images"

    def records(self) -> Iterator[ImageRecord]:
        for position, path in enumerate(self.paths):
            yield ImageRecord(position, str(path), path)


class MemorySource:
    """Images already decoded, keyed by name (renders, uploads, tests)."""

    def __init__(self, images: Sequence[tuple[str, PIL.Image.Image]], description: str = "images in memory") -> None:
        self.images = list(images)
        self.description = description

    def records(self) -> Iterator[ImageRecord]:
        for position, (key, image) in enumerate(self.images):
            yield ImageRecord(position, key, None, image=image)


def collection_root(description: str) -> Path | None:
    """The folder a source's files are listed relative to, from its ``description`` (as an
    index manifest records it): a folder source's folder, a list or table file's folder;
    None for in-memory images (or a description with a relative path, from before
    descriptions were absolute)."""
    kind, _, rest = description.partition(" ")
    if kind == "folder":
        root = Path(rest)
    elif kind == "list":
        root = Path(rest).parent
    elif kind == "table":
        root = Path(rest.rpartition(" (column ")[0] or rest).parent
    else:
        return None
    return root if root.is_absolute() else None


# What names a source: a folder, a list or Parquet/CSV file, a list of image paths, or a source.
SourceSpec = str | Path | Sequence[str | Path] | ImageSource


def open_source(spec: SourceSpec, path_column: str | None = None) -> ImageSource:
    """The source a path names (a folder, a Parquet/CSV table, or a list file), a list of
    image paths, or ``spec`` itself when it already is a source."""
    if isinstance(spec, (list, tuple)):
        return PathListSource(spec)
    if not isinstance(spec, (str, Path)):
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise CompsearchError(
            f"image collection {path} does not exist",
            "pass a folder of images, a text file listing image paths, or a Parquet/CSV file with a `path` column",
        )
    if path.suffix.lower() in TABLE_SUFFIXES:
        return TableSource(path, path_column)
    if has_image_suffix(path.name):
        raise CompsearchError(f"{path} is an image, not a collection",
                              "pass the folder that holds it, or a text file listing the images")
    return ListFileSource(path)

