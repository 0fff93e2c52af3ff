"""An on-disk, resumable cache of component contributions and CLIP targets, row-aligned.

Training an aligner runs over the same images for many epochs; the models run once. The
cache is a :class:`~mapping.chunk_store.ChunkStore` (one part per chunk) plus
``manifest.json``:

- the manifest fixes *what* is cached (model, CLIP, their weights, first block: the
  ``key``) and the source's listing (image keys in order), cut into chunks of
  ``chunk_size`` listed images by :mod:`mapping.images.plan`; it is written before any part;
- each part ``part-000-CCCCCC.safetensors`` holds ``contributions`` (rows, components,
  d_model) and ``targets`` (rows, d_clip) of one chunk, computed from the same decoded
  images, and in its metadata the chunk's images and those skipped as unreadable (why).
  Its images are checked on every read against the chunk's listing, so a contribution can
  never be paired with another image's target (the reference mixes two shuffled loaders).
  Safetensors, not Parquet: the rows are (components, d_model) tensors that training reads
  whole, and a part is then one memory map with no reshaping;
- a part on disk is a finished chunk (written under a temporary name and renamed): an
  interrupted run (Ctrl-C or ``kill -9``) leaves only complete chunks, and the next run
  with the same key reads the others only.

Training shuffles rows within windows of about ``shuffle_window`` rows (several parts),
not within a part, so the chunk size sets what an interruption costs and nothing else.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import safetensors.torch
import torch

from compsearch.mapping.chunk_store import ChunkStore, DamagedFileError, interrupted, read_file, read_json, write_json
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import Batch as ImageBatch
from compsearch.mapping.images import SourceSpec, open_source
from compsearch.mapping.images.loader import Transform
from compsearch.mapping.images.plan import plan_listing
from compsearch.mapping.images.probe import probe_batches

FORMAT_VERSION = 3  # 3: one part per chunk, skipped images in the parts
MANIFEST = "manifest.json"
PART = ".safetensors"
CHUNK_SIZE = 64  # images per loader chunk: what a Ctrl-C can cost, per worker
SHUFFLE_WINDOW = 512  # rows, about: training shuffles rows within a window of parts
_REBUILD = "delete {folder} and rerun the same command to rebuild the cache"


class Encoder(Protocol):
    """The models of the cache: ``transforms`` are applied to each decoded image, and the
    call maps one batch's pixels (a tensor per transform) to ``(component names,
    contributions (rows, C, d_model), targets (rows, d_clip))``."""

    @property
    def transforms(self) -> Sequence[Transform]: ...

    def __call__(self, pixels: list[torch.Tensor]) -> tuple[list[str], torch.Tensor, torch.Tensor]: ...


Batch = tuple[torch.Tensor, torch.Tensor]


def is_heldout(image: str, fraction: float) -> bool:
    """Whether ``image`` (a relative path) is held out: decided by a hash of the path alone,
    so the split is the same across runs, resumes and growing image sets."""
    digest = hashlib.sha256(image.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class FeatureCache:
    """A cache, read part by part (see the module docstring for the layout)."""

    def __init__(self, folder: str | Path, heldout_fraction: float = 0.1, shuffle_window: int = SHUFFLE_WINDOW) -> None:
        self.folder = Path(folder).expanduser()
        self.manifest = read_json(self.folder / MANIFEST, _REBUILD.format(folder=self.folder))
        self.heldout_fraction = heldout_fraction
        self.shuffle_window = shuffle_window
        self.parts = ChunkStore(self.folder, PART)
        # Each part's header (images, skipped), read once: the tensors are read when trained on.
        self.headers = {chunk: read_file(self.parts.path(0, chunk), _read_header, self._hint)
                        for chunk in sorted(self.parts.done())}

    @property
    def _hint(self) -> str:
        return _REBUILD.format(folder=self.folder)

    @property
    def component_names(self) -> list[str]:
        return self.manifest["component_names"]

    @property
    def images(self) -> list[str]:
        """The images cached, chunk by chunk."""
        return [image for images, _ in self.headers.values() for image in images]

    @property
    def skipped(self) -> dict[str, str]:
        """Listed images that could not be read, and why."""
        return {image: reason for _, skipped in self.headers.values() for image, reason in skipped.items()}

    @property
    def dims(self) -> tuple[int, int]:
        return self.manifest["model_dim"], self.manifest["clip_dim"]

    def count(self, heldout: bool) -> int:
        """Training (``heldout=False``) or held-out rows."""
        return sum(is_heldout(image, self.heldout_fraction) == heldout for image in self.images)

    def read_chunk(self, chunk: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``(images, contributions, targets)`` of one chunk's part, checked row by row against
        the listing: a part holding other images than its chunk's is refused."""
        path = self.parts.path(0, chunk)
        images, skipped, contributions, targets = read_file(path, _read_part, self._hint)
        size, listing = self.manifest["chunk_size"], self.manifest["images"]
        expected = [image for image in listing[chunk * size:(chunk + 1) * size] if image not in skipped]
        if images != expected or len(images) != len(targets):
            raise DamagedFileError(f"cache part {path} does not hold the images of its chunk", self._hint)
        return images, contributions.float(), targets.float()

    def batches(self, batch_size: int, heldout: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Training (``heldout=False``, shuffled when ``generator`` is given) or held-out rows
        (:func:`is_heldout` with ``heldout_fraction``).

        Parts are visited in a shuffled order and their rows shuffled within windows of about
        ``shuffle_window`` rows, so only one window is in memory whatever the size of the set.
        """
        with_rows = [chunk for chunk, (images, _) in self.headers.items() if images]
        order = (torch.tensor(with_rows)[torch.randperm(len(with_rows), generator=generator)].tolist()
                 if generator is not None else with_rows)
        for window in _windows(order, [len(self.headers[chunk][0]) for chunk in order], self.shuffle_window):
            parts = [self.read_chunk(chunk) for chunk in window]
            images = [image for part in parts for image in part[0]]
            contributions, targets = torch.cat([part[1] for part in parts]), torch.cat([part[2] for part in parts])
            keep = torch.tensor([is_heldout(image, self.heldout_fraction) == heldout for image in images],
                                dtype=torch.bool)
            rows = keep.nonzero().squeeze(1)
            if generator is not None:
                rows = rows[torch.randperm(len(rows), generator=generator)]
            for start in range(0, len(rows), batch_size):
                chosen = rows[start:start + batch_size]
                yield contributions[chosen], targets[chosen]


def _windows(chunks: list[int], sizes: list[int], rows: int) -> Iterator[list[int]]:
    """``chunks`` in order, grouped until each group holds at least ``rows`` rows."""
    window: list[int] = []
    held = 0
    for chunk, size in zip(chunks, sizes):
        window.append(chunk)
        held += size
        if held >= rows:
            yield window
            window, held = [], 0
    if window:
        yield window


def _read_header(path: Path) -> tuple[list[str], dict[str, str]]:
    with safetensors.safe_open(path, framework="pt") as opened:
        metadata = opened.metadata()
    return json.loads(metadata["images"]), json.loads(metadata["skipped"])


def _read_part(path: Path) -> tuple[list[str], dict[str, str], torch.Tensor, torch.Tensor]:
    with safetensors.safe_open(path, framework="pt") as opened:
        metadata = opened.metadata()
        tensors = opened.get_tensor("contributions"), opened.get_tensor("targets")
    return json.loads(metadata["images"]), json.loads(metadata["skipped"]), *tensors


def _open_or_start(folder: Path, key: dict, listing: list[str], chunk_size: int) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        manifest = {"format_version": FORMAT_VERSION, "key": key, "chunk_size": chunk_size, "images": listing}
        write_json(path, manifest)  # before any part: a part is only ever read under its own key
        return manifest
    manifest = read_json(path, _REBUILD.format(folder=folder))
    if (manifest.get("format_version"), manifest.get("key"), manifest.get("images"), manifest.get("chunk_size")) != (
            FORMAT_VERSION, key, listing, chunk_size):
        raise CompsearchError(
            f"the feature cache {folder} was built for other models, images or settings",
            "pass another --cache folder, or delete this one to rebuild it",
        )
    return manifest


@dataclass
class _ChunkRows:
    """One chunk's rows, collected batch by batch until the chunk is complete."""

    chunk: int
    images: list[str] = field(default_factory=list)
    contributions: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class _CacheWriter:
    """Encodes batches and writes each chunk as one part as soon as it is complete."""

    def __init__(self, folder: Path, manifest: dict, encode: Encoder) -> None:
        self.folder, self.manifest, self.encode = folder, manifest, encode
        self.parts = ChunkStore(folder, PART)
        self.open: dict[int, _ChunkRows] = {}  # chunks still being read (one per worker)

    def add(self, batch: ImageBatch) -> None:
        rows = self.open.setdefault(batch.chunk, _ChunkRows(batch.chunk))
        rows.skipped.update((record.key, reason) for record, reason in batch.skipped)
        if len(batch):
            names, contributions, targets = self.encode(batch.pixels)
            self._check_components(names, contributions, targets)
            rows.images += [record.key for record in batch.records]
            rows.contributions.append(contributions.float())
            rows.targets.append(targets.float())
        if batch.chunk_done:
            self._write(self.open.pop(batch.chunk))

    def _check_components(self, names: list[str], contributions: torch.Tensor, targets: torch.Tensor) -> None:
        if "component_names" not in self.manifest:
            self.manifest.update(component_names=names, model_dim=contributions.shape[-1],
                                 clip_dim=targets.shape[-1])
            write_json(self.folder / MANIFEST, self.manifest)  # before the first part that has rows
        elif names != self.manifest["component_names"]:
            raise CompsearchError(f"the model's components changed while caching into {self.folder}",
                                  "delete the cache folder and rebuild it")

    def _write(self, rows: _ChunkRows) -> None:
        """One part per chunk (empty tensors when all its images were skipped)."""
        empty = torch.zeros(0)
        tensors = {"contributions": torch.cat(rows.contributions) if rows.images else empty,
                   "targets": torch.cat(rows.targets) if rows.images else empty}
        metadata = {"images": json.dumps(rows.images), "skipped": json.dumps(rows.skipped)}
        self.parts.write(0, rows.chunk, lambda temporary: safetensors.torch.save_file(
            {key: value.contiguous() for key, value in tensors.items()}, temporary, metadata=metadata))


def build_cache(
    folder: str | Path,
    images: SourceSpec,
    encode: Encoder,
    key: dict,
    shuffle_window: int = SHUFFLE_WINDOW,
    heldout_fraction: float = 0.1,
    batch_size: int = 32,
    workers: int = 0,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
) -> FeatureCache:
    """Cache ``encode`` of the probe set ``images`` in ``folder``, reading only the chunks
    an earlier run with the same ``key`` did not complete.

    Unreadable images are skipped (recorded in their chunk's part, warned about). On Ctrl-C
    the chunks completed so far are on disk already; :func:`~mapping.chunk_store.interrupted`
    says how many images they hold and how to resume.
    """
    folder = Path(folder).expanduser()
    source = open_source(images)
    listing = [record.key for record in source.records()]
    manifest = _open_or_start(folder, key, listing, chunk_size)
    writer = _CacheWriter(folder, manifest, encode)
    try:
        for batch in probe_batches(source, encode.transforms, batch_size, workers, progress, "caching features",
                                   chunk_size, writer.parts.done()):
            writer.add(batch)
    except KeyboardInterrupt:
        kept = plan_listing(len(listing), chunk_size, done=writer.parts.done()).images_done
        raise interrupted(kept, len(listing), folder) from None
    return FeatureCache(folder, heldout_fraction, shuffle_window)
