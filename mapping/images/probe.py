"""Reading a probe set: the images a stage learns or measures on (align, rank, describe).

A probe set is small enough to list twice (once to count, for a progress bar with a total
and an ETA) and is read with the skip policy: a file that cannot be read costs one image,
not the run, and the files skipped are reported in one warning with their count.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from tqdm import tqdm

from compsearch.mapping.errors import CompsearchError, warn
from compsearch.mapping.images.loader import DEFAULT_CHUNK_SIZE, Batch, Transform, iter_batches
from compsearch.mapping.images.plan import plan
from compsearch.mapping.images.sources import IMAGE_SUFFIXES, ImageRecord, ImageSource, SourceSpec, open_source

REASONS_SHOWN = 3


def count_images(source: ImageSource, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 skip_chunks: Iterable[int] = ()) -> tuple[int, int]:
    """``(listed, to read)``: images ``source`` lists, and those outside ``skip_chunks``."""
    cut = plan(source, chunk_size, done=skip_chunks)
    return cut.listed, cut.images_todo


def warn_skipped(source: ImageSource, skipped: Sequence[tuple[ImageRecord, str]], total: int) -> None:
    """One warning line: how many of ``total`` images were skipped, and the first reasons."""
    if not skipped:
        return
    reasons = "; ".join(reason for _, reason in skipped[:REASONS_SHOWN])
    more = f"; and {len(skipped) - REASONS_SHOWN} more" if len(skipped) > REASONS_SHOWN else ""
    warn(f"skipped {len(skipped)} of {total} images of {source.description} that could not be read "
         f"({reasons}{more}); the others were used")


def probe_batches(
    images: SourceSpec,
    transforms: Sequence[Transform],
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    description: str = "reading images",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    skip_chunks: Iterable[int] = (),
) -> Iterator[Batch]:
    """The batches of ``images`` (see :func:`~mapping.images.iter_batches`; a batch whose
    files were all skipped is empty), with a per-image progress bar; unreadable files are
    skipped and warned about at the end.

    Raises when nothing is listed, or when a full pass (no ``skip_chunks``) reads nothing.
    """
    source = open_source(images)
    skip_chunks = frozenset(skip_chunks)
    listed, total = count_images(source, chunk_size, skip_chunks)
    if not listed:
        raise CompsearchError(f"no images in {source.description}",
                              f"use files with one of {', '.join(sorted(IMAGE_SUFFIXES))}")
    skipped: list[tuple[ImageRecord, str]] = []
    with tqdm(total=total, desc=description, unit="img", disable=not progress) as bar:
        for batch in iter_batches(source, transforms, batch_size, workers, "skip", chunk_size, skip_chunks):
            skipped += batch.skipped
            bar.update(len(batch) + len(batch.skipped))
            yield batch
    if not skip_chunks and len(skipped) == total:
        raise CompsearchError(f"none of the {total} images of {source.description} could be read "
                              f"({skipped[0][1]})", "check that the files are images")
    warn_skipped(source, skipped, total)
