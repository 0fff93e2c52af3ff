"""An on-disk, resumable cache of component contributions and CLIP targets, row-aligned.

Training an aligner runs over the same images for many epochs; the models run once. The
cache is a folder of shards plus ``manifest.json``:

- the manifest fixes *what* is cached (model, CLIP, their weights, first block: the
  ``key``) and the source's listing (image keys in order), cut into chunks of
  ``chunk_size`` listed images as the image loader reads them (:mod:`mapping.images.loader`);
- each shard (safetensors) holds ``contributions`` (rows, components, d_model) and
  ``targets`` (rows, d_clip) computed from the same decoded images, for whole chunks; the
  manifest lists the chunks each shard covers and the images skipped as unreadable, and
  the shard's own metadata lists its images, checked on every read against what the
  manifest says they must be, so a contribution can never be paired with another image's
  target (the reference mixes two shuffled loaders);
- a shard is written to a temporary name and renamed, then recorded in the manifest, which
  is itself replaced atomically: an interrupted run (Ctrl-C: the chunks completed so far
  are written first; ``kill -9``: the shards written so far) leaves only complete chunks,
  and the next run with the same key reads the others only.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import safetensors.torch
import torch

from compsearch.mapping.errors import CompsearchError, Interrupted
from compsearch.mapping.images import Batch as ImageBatch
from compsearch.mapping.images import SourceSpec, open_source
from compsearch.mapping.images.loader import Transform
from compsearch.mapping.images.probe import probe_batches

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
CHUNK_SIZE = 64  # images per loader chunk: what a Ctrl-C can cost, per worker
SHARD_SIZE = 512  # rows per shard, about: training shuffles rows within a shard


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


def _shard_images(manifest: dict, shard: dict) -> list[str]:
    """The images a shard must hold: its chunks' listed images, less the skipped ones."""
    size, listing, skipped = manifest["chunk_size"], manifest["images"], manifest["skipped"]
    return [image for chunk in shard["chunks"] for image in listing[chunk * size:(chunk + 1) * size]
            if image not in skipped]


class FeatureCache:
    """A cache, read shard by shard (see the module docstring for the layout)."""

    def __init__(self, folder: Path, manifest: dict, heldout_fraction: float = 0.1) -> None:
        self.folder = folder
        self.manifest = manifest
        self.heldout_fraction = heldout_fraction

    @property
    def component_names(self) -> list[str]:
        return self.manifest["component_names"]

    @property
    def images(self) -> list[str]:
        """The images cached, shard by shard."""
        return [image for shard in self.manifest["shards"] for image in _shard_images(self.manifest, shard)]

    @property
    def skipped(self) -> dict[str, str]:
        """Listed images that could not be read, and why."""
        return self.manifest["skipped"]

    @property
    def dims(self) -> tuple[int, int]:
        return self.manifest["model_dim"], self.manifest["clip_dim"]

    def count(self, heldout: bool) -> int:
        """Training (``heldout=False``) or held-out rows."""
        return sum(is_heldout(image, self.heldout_fraction) == heldout for image in self.images)

    def read_shard(self, index: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``(images, contributions, targets)`` of shard ``index``, checked row by row."""
        shard = self.manifest["shards"][index]
        path = self.folder / shard["file"]
        with safetensors.safe_open(path, framework="pt") as opened:
            images = json.loads(opened.metadata()["images"])
            contributions, targets = opened.get_tensor("contributions"), opened.get_tensor("targets")
        if images != _shard_images(self.manifest, shard) or len(images) != len(targets):
            raise CompsearchError(
                f"cache shard {path} does not hold the images its manifest lists there",
                f"delete {self.folder} and rebuild the cache",
            )
        return images, contributions.float(), targets.float()

    def batches(self, batch_size: int, heldout: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Training (``heldout=False``, shuffled when ``generator`` is given) or held-out rows
        (:func:`is_heldout` with ``heldout_fraction``).

        Shards are visited in a shuffled order and rows shuffled within each, so only one
        shard is in memory at a time whatever the size of the image set.
        """
        with_rows = [index for index, shard in enumerate(self.manifest["shards"]) if shard["file"]]
        order = (torch.tensor(with_rows)[torch.randperm(len(with_rows), generator=generator)].tolist()
                 if generator is not None else with_rows)
        for index in order:
            images, contributions, targets = self.read_shard(index)
            keep = torch.tensor([is_heldout(image, self.heldout_fraction) == heldout for image in images],
                                dtype=torch.bool)
            rows = keep.nonzero().squeeze(1)
            if generator is not None:
                rows = rows[torch.randperm(len(rows), generator=generator)]
            for start in range(0, len(rows), batch_size):
                chosen = rows[start:start + batch_size]
                yield contributions[chosen], targets[chosen]


def _open_or_start(folder: Path, key: dict, listing: list[str], chunk_size: int) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "key": key, "chunk_size": chunk_size, "images": listing,
                "shards": [], "skipped": {}}
    manifest = json.loads(path.read_text())
    if (manifest.get("format_version"), manifest.get("key"), manifest.get("images"), manifest.get("chunk_size")) != (
            FORMAT_VERSION, key, listing, chunk_size):
        raise CompsearchError(
            f"the feature cache {folder} was built for other models, images or settings",
            "pass another --cache folder, or delete this one to rebuild it",
        )
    # Keep the shards whose files are still there; the chunks of the others are read again.
    manifest["shards"] = [shard for shard in manifest["shards"] if not shard["file"] or (folder / shard["file"]).is_file()]
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
    """Collects complete chunks and writes them as shards of about ``shard_size`` rows."""

    def __init__(self, folder: Path, manifest: dict, encode: Encoder, shard_size: int) -> None:
        self.folder, self.manifest, self.encode, self.shard_size = folder, manifest, encode, shard_size
        self.open: dict[int, _ChunkRows] = {}  # chunks still being read (one per worker)
        self.complete: list[_ChunkRows] = []  # complete chunks not yet written

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
            self.complete.append(self.open.pop(batch.chunk))
            if sum(len(chunk.images) for chunk in self.complete) >= self.shard_size:
                self.flush()

    def _check_components(self, names: list[str], contributions: torch.Tensor, targets: torch.Tensor) -> None:
        if "component_names" not in self.manifest:
            self.manifest.update(component_names=names, model_dim=contributions.shape[-1],
                                 clip_dim=targets.shape[-1])
        elif names != self.manifest["component_names"]:
            raise CompsearchError(f"the model's components changed while caching into {self.folder}",
                                  "delete the cache folder and rebuild it")

    def flush(self) -> None:
        """Write the complete chunks as one shard (no file if all their images were skipped)."""
        if not self.complete:
            return
        chunks, self.complete = self.complete, []
        images = [image for chunk in chunks for image in chunk.images]
        name = None
        if images:
            name = f"shard-{chunks[0].chunk:06d}.safetensors"  # a chunk is in one shard: names never clash
            temporary = self.folder / f".{name}.tmp"
            tensors = {"contributions": torch.cat([t for chunk in chunks for t in chunk.contributions]),
                       "targets": torch.cat([t for chunk in chunks for t in chunk.targets])}
            safetensors.torch.save_file({key: value.contiguous() for key, value in tensors.items()}, temporary,
                                        metadata={"images": json.dumps(images)})
            os.replace(temporary, self.folder / name)
        for chunk in chunks:
            self.manifest["skipped"].update(chunk.skipped)
        self.manifest["shards"].append({"file": name, "chunks": [chunk.chunk for chunk in chunks]})
        temporary = self.folder / f".{MANIFEST}.tmp"
        temporary.write_text(json.dumps(self.manifest))
        os.replace(temporary, self.folder / MANIFEST)


def build_cache(
    folder: str | Path,
    images: SourceSpec,
    encode: Encoder,
    key: dict,
    shard_size: int = SHARD_SIZE,
    heldout_fraction: float = 0.1,
    batch_size: int = 32,
    workers: int = 0,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
) -> FeatureCache:
    """Cache ``encode`` of the probe set ``images`` in ``folder``, reading only the chunks
    an earlier run with the same ``key`` did not complete.

    Unreadable images are skipped (recorded in the manifest, warned about). On Ctrl-C the
    chunks completed so far are written, then :class:`~mapping.errors.Interrupted` says what
    was kept and how to resume.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    source = open_source(images)
    manifest = _open_or_start(folder, key, [record.key for record in source.records()], chunk_size)
    done = {chunk for shard in manifest["shards"] for chunk in shard["chunks"]}
    writer = _CacheWriter(folder, manifest, encode, shard_size)
    try:
        for batch in probe_batches(source, encode.transforms, batch_size, workers, progress, "caching features",
                                   chunk_size, done):
            writer.add(batch)
    except KeyboardInterrupt:
        writer.flush()
        cache = FeatureCache(folder, manifest, heldout_fraction)
        raise Interrupted(
            f"interrupted: the features of {len(cache.images)} of {len(manifest['images'])} images are kept "
            f"in {folder}", "rerun the same command to compute the rest",
        ) from None
    writer.flush()
    return FeatureCache(folder, manifest, heldout_fraction)
