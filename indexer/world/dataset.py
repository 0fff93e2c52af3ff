"""Write a split of the world to disk (PNG images + one Parquet file of labels) and read it back.

Layout under the output folder: ``<split>/<index:06d>.png`` and ``<split>.parquet`` (one
row per image: file, factors, jitter, canonical caption). Writing is resumable: an image
that already exists and opens at the right size is kept, and each PNG is written to a
temporary name first, so an interrupted run never leaves a half-written image behind.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from compsearch.indexer.world.captions import canonical_caption
from compsearch.indexer.world.render import render_image
from compsearch.indexer.world.splits import Split
from compsearch.mapping.errors import CompsearchError


def _is_valid_image(path: Path, size: int) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
            return image.size == (size, size)
    except (OSError, UnidentifiedImageError):
        return False


def _write_png(image: Image.Image, path: Path) -> None:
    partial = path.with_suffix(".png.partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def write_split(out_dir: Path | str, split: Split, count: int, size: int = 224, progress: bool = True) -> Path:
    """Render ``count`` items of ``split`` into ``out_dir``; returns the labels' Parquet path."""
    if count <= 0:
        raise CompsearchError(f"asked for {count} world images", "pass a count of at least 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CompsearchError(f"world output {out_dir} is a file", "pass a folder path (it is created if missing)")
    image_dir = out_dir / split.name
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CompsearchError(f"cannot create {image_dir}: {error.strerror}", "pass a writable folder") from error

    rows = []
    for item in tqdm(split.items(count), desc=f"world {split.name}", unit="img", disable=not progress):
        path = image_dir / f"{item.index:06d}.png"
        if not _is_valid_image(path, size):
            _write_png(render_image(item, size), path)
        rows.append({"file": f"{split.name}/{path.name}", "split": split.name, **item.as_row(),
                     "caption": canonical_caption(item.factors())})
    table = pa.Table.from_pylist(rows).replace_schema_metadata(
        {"resolution": str(size), "holdout": split.holdout.value})
    labels = out_dir / f"{split.name}.parquet"
    pq.write_table(table, labels)
    return labels


def read_labels(path: Path | str) -> pa.Table:
    """The labels table written by :func:`write_split`."""
    path = Path(path)
    if not path.is_file():
        raise CompsearchError(f"world labels {path} not found", "write the split first: compsearch world render")
    return pq.read_table(path)
