"""Batches of decoded, preprocessed images from a source, decoded in DataLoader workers.

The listing is cut into *chunks* of ``chunk_size`` consecutive positions. A worker takes
whole chunks (chunk c goes to worker c mod W), reads each file once, hashes and decodes
those bytes once, applies every transform to the one decoded image, and yields batches
tagged with their chunk; the last batch of a chunk says so. A writer that stores one shard
per chunk therefore resumes by skipping the chunks it has (``skip_chunks``), and several
processes split a collection by chunk (``partition=(i, n)``: chunks c with c mod n = i).

Bad files never stop a collection: each is reported in ``Batch.skipped`` with its reason
(``on_error="skip"``); for files a user named, ``on_error="raise"`` raises the first one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import PIL.Image
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mapping.errors import ImageReadError
from mapping.images.decode import decode_image, read_image, read_image_bytes, to_rgb
from mapping.images.sources import ImageRecord, ImageSource, open_source

if TYPE_CHECKING:  # reading images needs no model library
    from mapping.models import LoadedModel

Transform = Callable[[PIL.Image.Image], torch.Tensor]
DEFAULT_CHUNK_SIZE = 1024


@dataclass
class Batch:
    """Up to ``batch_size`` images of one chunk, each decoded once."""

    chunk: int
    records: list[ImageRecord]  # the images decoded, in listing order
    pixels: list[torch.Tensor]  # one (images, …) tensor per transform; empty if none decoded
    sizes: list[tuple[int, int]]  # (width, height) as displayed (EXIF orientation applied)
    sha256: list[str]  # of the file's bytes
    skipped: list[tuple[ImageRecord, str]]  # files of this span that could not be read, and why
    chunk_done: bool  # this is the last batch of its chunk

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class _Decoded:
    record: ImageRecord
    pixels: list[torch.Tensor]
    size: tuple[int, int]
    sha256: str


def _decode(record: ImageRecord, transforms: Sequence[Transform]) -> _Decoded:
    if record.image is not None:
        image = to_rgb(record.image)
        digest = hashlib.sha256(image.tobytes()).hexdigest()
    else:
        data = read_image_bytes(record.path)
        digest = hashlib.sha256(data).hexdigest()
        image = decode_image(data, record.key)
    return _Decoded(record, [transform(image) for transform in transforms], image.size, digest)


def _reason(record: ImageRecord, error: Exception) -> str:
    """Why ``record`` was skipped, naming it (the reason may be raised on its own)."""
    if isinstance(error, ImageReadError):
        return error.problem
    return f"{record.key} could not be preprocessed ({type(error).__name__}: {error})"


def _batch(chunk: int, decoded: list[_Decoded], skipped: list[tuple[ImageRecord, str]], done: bool,
           transform_count: int) -> Batch:
    pixels = [torch.stack([item.pixels[t] for item in decoded]) for t in range(transform_count)] if decoded else []
    return Batch(chunk, [item.record for item in decoded], pixels, [item.size for item in decoded],
                 [item.sha256 for item in decoded], skipped, done)


class _ChunkedImages(IterableDataset):
    def __init__(self, source: ImageSource, transforms: Sequence[Transform], batch_size: int, chunk_size: int,
                 skip_chunks: frozenset[int], partition: tuple[int, int]) -> None:
        self.source = source
        self.transforms = list(transforms)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.skip_chunks = skip_chunks
        self.partition = partition

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index, count = self.partition
        mine = 0  # chunks of this partition seen so far: dealt round robin to the workers
        for chunk, records in groupby(self.source.records(), key=lambda record: record.position // self.chunk_size):
            if chunk % count != index or chunk in self.skip_chunks:
                continue
            mine += 1
            if (mine - 1) % workers == worker:
                yield from self._chunk_batches(chunk, list(records))

    def _chunk_batches(self, chunk: int, records: list[ImageRecord]) -> Iterator[Batch]:
        for start in range(0, len(records), self.batch_size):
            decoded, skipped = [], []
            for record in records[start:start + self.batch_size]:
                try:
                    decoded.append(_decode(record, self.transforms))
                except Exception as error:  # a collection goes on past any bad file; the reason is kept
                    skipped.append((record, _reason(record, error)))
            yield _batch(chunk, decoded, skipped, start + self.batch_size >= len(records), len(self.transforms))


def _one_thread_per_worker(_: int) -> None:
    torch.set_num_threads(1)  # W workers × N intra-op threads would oversubscribe the cores


def iter_batches(
    source: str | Path | ImageSource,
    transforms: Sequence[Transform],
    batch_size: int = 32,
    workers: int = 0,
    on_error: Literal["skip", "raise"] = "skip",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    skip_chunks: Iterable[int] = (),
    partition: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Batches of ``source``'s images through ``transforms`` (see the module docstring)."""
    if not 0 <= partition[0] < partition[1]:
        raise ValueError(f"partition {partition} is not (index, count) with 0 <= index < count")
    dataset = _ChunkedImages(open_source(source), transforms, batch_size, chunk_size, frozenset(skip_chunks),
                             partition)
    if workers > 0:
        batches: Iterable[Batch] = DataLoader(
            dataset, batch_size=None, num_workers=workers, worker_init_fn=_one_thread_per_worker,
            prefetch_factor=2,
        )
    else:
        batches = dataset
    for batch in batches:
        if on_error == "raise" and batch.skipped:
            record, reason = batch.skipped[0]
            raise ImageReadError(reason, "fix or remove that file")
        yield batch


def preprocess_batch(paths: Iterable[str | Path], loaded: LoadedModel) -> torch.Tensor:
    """The images at ``paths`` through the model's own eval transform, as one batch."""
    return torch.stack([loaded.preprocess(read_image(path)) for path in paths])
