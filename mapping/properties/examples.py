"""Properties defined by labelled example images instead of words: one folder per value, or
a labelled table.

``DIR/striped/*.jpg, DIR/plain/*.jpg, …`` defines the property ``DIR``'s name with the
values ``striped``, ``plain``, …; ``TABLE.parquet:COLUMN`` (or ``.csv``) defines the
property ``COLUMN`` by the table's image paths (its ``path`` or ``file`` column, relative to
the table) and their values in ``COLUMN`` — e.g. the world's own labels,
``world/train.parquet:colour``. No text encoder is involved.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compsearch.mapping.images import IMAGE_SUFFIXES, FolderSource
from compsearch.mapping.properties.vocabulary import PropertyError


@dataclass(frozen=True)
class ExampleProperty:
    name: str
    values: tuple[str, ...]  # the folder names, sorted
    images: tuple[Path, ...]
    labels: tuple[int, ...]  # per image, an index into ``values``


TABLE_SUFFIXES = (".parquet", ".csv")


def load_examples(spec: str | Path, name: str | None = None) -> ExampleProperty:
    """The example property in the folder or ``TABLE:COLUMN`` ``spec`` (named after the folder
    or column unless ``name`` is given)."""
    table, column = _table_column(str(spec))
    if table is not None:
        return _table_examples(table, column, name)
    folder = Path(spec).expanduser()
    values = sorted(child.name for child in folder.iterdir() if child.is_dir()) if folder.is_dir() else []
    if len(values) < 2:
        raise PropertyError(
            f"{folder} needs at least two sub-folders of example images, one per value (found {len(values)})",
            "lay it out as DIR/VALUE/image.jpg, e.g. DIR/striped/…, DIR/plain/…",
        )
    images: list[Path] = []
    labels: list[int] = []
    for label, value in enumerate(values):
        found = [record.path for record in FolderSource(folder / value).records()]
        if not found:
            raise PropertyError(f"no images in {folder / value}",
                                f"put files with one of {', '.join(sorted(IMAGE_SUFFIXES))} there")
        images += found
        labels += [label] * len(found)
    return ExampleProperty(name or folder.name, tuple(values), tuple(images), tuple(labels))


def _table_column(spec: str) -> tuple[Path | None, str]:
    """``(table, column)`` when ``spec`` names a table's column; ``(None, "")`` for a folder."""
    table, colon, column = spec.rpartition(":")
    if colon and Path(table).suffix.lower() in TABLE_SUFFIXES:
        return Path(table).expanduser(), column
    if Path(spec).suffix.lower() in TABLE_SUFFIXES:
        raise PropertyError(f"--examples {spec}: which column holds the labels?",
                            f"write {spec}:COLUMN, e.g. world/train.parquet:colour")
    return None, ""


def _table_examples(table: Path, column: str, name: str | None) -> ExampleProperty:
    from compsearch.mapping.images.sources import TableSource

    if not table.is_file():
        raise PropertyError(f"example table {table} does not exist", "pass TABLE.parquet:COLUMN of an existing file")
    records = list(TableSource(table).records())
    if records and column not in records[0].metadata:
        raise PropertyError(f"{table} has no column {column!r}",
                            f"its label columns: {', '.join(records[0].metadata) or 'none'}")
    labelled = [(record.path, str(record.metadata[column])) for record in records
                if record.metadata.get(column) is not None]
    values = sorted({value for _, value in labelled})
    if len(values) < 2:
        raise PropertyError(f"column {column!r} of {table} needs at least two values (found {len(values)})",
                            "label the images with two or more values")
    return ExampleProperty(name or column, tuple(values), tuple(path for path, _ in labelled),
                           tuple(values.index(value) for _, value in labelled))
