"""Batches of decoded, preprocessed images from a source, decoded in DataLoader workers.

The listing is cut into chunks by :mod:`.plan` (the one chunk/partition rule). A worker
takes whole chunks (dealt round robin), reads each file once, hashes and decodes
those bytes once, applies every transform to the one decoded image, and yields batches
tagged with their chunk; the last batch of a chunk says so. A writer that stores one shard
per chunk therefore resumes by skipping the chunks it has (``skip_chunks``), and several
processes split a collection by chunk (``partition=(i, n)``: chunks c with c mod n = i).

Bad files never stop a collection: each is reported in ``Batch.skipped`` with its reason
(``on_error="skip"``); for files a user named, ``on_error="raise"`` raises the first one.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import PIL.Image
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from compsearch.mapping.errors import ImageReadError
from compsearch.mapping.images.decode import decode_image, read_image, read_image_bytes, to_rgb
from compsearch.mapping.images.file_facts import file_facts
from compsearch.mapping.images.device_decode import TensorTransform, decode_jpegs, is_jpeg, tensor_transform
from compsearch.mapping.images.plan import WorkUnit, check_partition, units
from compsearch.mapping.images.sources import ImageRecord, ImageSource, open_source, records_between

if TYPE_CHECKING:  # reading images needs no model library
    from compsearch.mapping.models import LoadedModel

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
    facts: list[dict[str, Any]]  # size, mtime and EXIF columns of each file (mapping.images.file_facts); {} in memory
    skipped: list[tuple[ImageRecord, str]]  # files of this span that could not be read, and why
    chunk_done: bool  # this is the last batch of its chunk
    pending: list[_Decoded] | None = field(default=None, repr=False)  # JPEGs left to the device decoder

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class _Decoded:
    record: ImageRecord
    pixels: list[torch.Tensor] | None  # None: a JPEG whose bytes the device decodes (``jpeg``)
    size: tuple[int, int] | None
    sha256: str
    facts: dict[str, Any]
    jpeg: bytes | None = None


def _check_header(data: bytes, name: str) -> None:
    """What the device decoder would not check: a readable header within the pixel limit."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - any unreadable header: let the full decoder say why
        decode_image(data, name)
        raise
    if PIL.Image.MAX_IMAGE_PIXELS and width * height > PIL.Image.MAX_IMAGE_PIXELS:
        decode_image(data, name)  # raises the decoder's own "too large" error


def _decode(record: ImageRecord, transforms: Sequence[Transform], defer_jpeg: bool = False) -> _Decoded:
    if record.problem is not None:
        raise ImageReadError(record.problem, "fix or remove that entry")
    if record.image is not None:
        image = to_rgb(record.image)
        digest, facts = hashlib.sha256(image.tobytes()).hexdigest(), {}
    else:
        data = read_image_bytes(record.path)
        digest, facts = hashlib.sha256(data).hexdigest(), file_facts(record.path, data)
        if defer_jpeg and is_jpeg(data):
            _check_header(data, record.key)
            return _Decoded(record, None, None, digest, facts, data)
        image = decode_image(data, record.key)
    return _Decoded(record, [transform(image) for transform in transforms], image.size, digest, facts)


def _finish_on_device(batch: Batch, transforms: Sequence[Transform], pipelines: Sequence[TensorTransform],
                      device: str) -> Batch:
    """Decode a batch's pending JPEGs on ``device`` and stack every image's pixels there; a
    JPEG the device refuses goes through PIL instead, and one PIL refuses too is skipped."""
    items = batch.pending
    jpegs = [item for item in items if item.pixels is None]
    on_device = dict(zip(map(id, jpegs), decode_jpegs([item.jpeg for item in jpegs], device)))
    decoded, skipped = [], list(batch.skipped)
    for item in items:
        if item.pixels is not None:
            decoded.append(replace(item, pixels=[p.to(device) for p in item.pixels]))
            continue
        tensor = on_device[id(item)]
        try:
            if tensor is None:
                image = decode_image(item.jpeg, item.record.key)
                pixels, size = [transform(image).to(device) for transform in transforms], image.size
            else:
                pixels, size = [pipeline(tensor) for pipeline in pipelines], (tensor.shape[2], tensor.shape[1])
        except Exception as error:  # noqa: BLE001 - a collection goes on past any bad file
            skipped.append((item.record, _reason(item.record, error)))
            continue
        decoded.append(replace(item, pixels=pixels, size=size, jpeg=None))
    return _batch(batch.chunk, decoded, skipped, batch.chunk_done, len(transforms))


def _reason(record: ImageRecord, error: Exception) -> str:
    """Why ``record`` was skipped, naming it (the reason may be raised on its own)."""
    if isinstance(error, ImageReadError):
        return error.problem
    return f"{record.key} could not be preprocessed ({type(error).__name__}: {error})"


def _batch(chunk: int, decoded: list[_Decoded], skipped: list[tuple[ImageRecord, str]], done: bool,
           transform_count: int) -> Batch:
    pixels = [torch.stack([item.pixels[t] for item in decoded]) for t in range(transform_count)] if decoded else []
    return Batch(chunk, [item.record for item in decoded], pixels, [item.size for item in decoded],
                 [item.sha256 for item in decoded], [item.facts for item in decoded], skipped, done)


class _ChunkedImages(IterableDataset):
    def __init__(self, source: ImageSource, transforms: Sequence[Transform], batch_size: int, chunk_size: int,
                 skip_chunks: frozenset[int], partition: tuple[int, int], defer_jpeg: bool = False) -> None:
        self.defer_jpeg = defer_jpeg
        self.source = source
        self.transforms = list(transforms)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.skip_chunks = skip_chunks
        self.partition = partition

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # This partition's units still to do, dealt round robin to the workers.
        mine = units(self.source.records(), self.chunk_size, self.partition, self.skip_chunks)
        for number, (unit, records) in enumerate(mine):
            if number % workers == worker:
                yield from self._chunk_batches(unit.chunk, records)

    def _chunk_batches(self, chunk: int, records: list[ImageRecord]) -> Iterator[Batch]:
        return _unit_batches(chunk, records, self.transforms, self.batch_size, self.defer_jpeg)


def _unit_batches(chunk: int, records: list[ImageRecord], transforms: Sequence[Transform], batch_size: int,
                  defer_jpeg: bool = False) -> Iterator[Batch]:
    """One unit's records, read and decoded once each, in batches; the last one says so."""
    for start in range(0, len(records), batch_size):
        decoded, skipped = [], []
        for record in records[start:start + batch_size]:
            try:
                decoded.append(_decode(record, transforms, defer_jpeg))
            except Exception as error:  # a collection goes on past any bad file; the reason is kept
                skipped.append((record, _reason(record, error)))
        done = start + batch_size >= len(records)
        if defer_jpeg:  # stacked in the main process, once the device has decoded the JPEGs
            yield Batch(chunk, [], [], [], [], [], skipped, done, pending=decoded)
        else:
            yield _batch(chunk, decoded, skipped, done, len(transforms))


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
    jpeg_device: str | None = None,
) -> Iterator[Batch]:
    """Batches of ``source``'s images through ``transforms`` (see the module docstring).

    ``jpeg_device`` (e.g. ``"cuda"``): JPEGs are decoded there in batches and preprocessed as
    tensors (:mod:`mapping.images.device_decode`), the pixels returned on that device — when
    every transform has a tensor equivalent; otherwise everything takes the PIL path.
    """
    check_partition(partition)
    pipelines = [tensor_transform(transform) for transform in transforms] if jpeg_device else []
    defer_jpeg = bool(pipelines) and all(pipeline is not None for pipeline in pipelines)
    dataset = _ChunkedImages(open_source(source), transforms, batch_size, chunk_size, frozenset(skip_chunks),
                             partition, defer_jpeg)
    if workers > 0:
        batches: Iterable[Batch] = DataLoader(
            dataset, batch_size=None, num_workers=workers, worker_init_fn=_one_thread_per_worker,
            prefetch_factor=2,
        )
    else:
        batches = dataset
    for batch in batches:
        if batch.pending is not None:
            batch = _finish_on_device(batch, transforms, pipelines, jpeg_device)
        if on_error == "raise" and batch.skipped:
            record, reason = batch.skipped[0]
            raise ImageReadError(reason, "fix or remove that file")
        yield batch


def iter_unit_batches(source: str | Path | ImageSource, unit: WorkUnit, transforms: Sequence[Transform],
                      batch_size: int = 32) -> Iterator[Batch]:
    """The batches of one work unit of ``source``'s plan (its listing positions ``unit.start``
    to ``unit.stop - 1``), decoded here: what a task given only the unit reads."""
    records = list(records_between(open_source(source), unit.start, unit.stop))
    return _unit_batches(unit.chunk, records, list(transforms), batch_size)


def preprocess_batch(paths: Iterable[str | Path], loaded: LoadedModel) -> torch.Tensor:
    """The images at ``paths`` through the model's own eval transform, as one batch."""
    return torch.stack([loaded.preprocess(read_image(path)) for path in paths])
