"""The one pass: image source → PropertyEncoder → index store, resumable chunk by chunk.

Reader, mapper, writer (clip-retrieval's shape): :func:`mapping.images.iter_batches` reads
and decodes in workers, the :class:`~mapping.encoder.PropertyEncoder` maps each batch to
every property's vector in one forward pass, and :class:`~indexer.store.IndexStore` writes
one shard per finished chunk. The FAISS indexes are built from the shards at the end.

Runs: the first build is run 0; each ``append`` starts a new run whose ids continue after
the largest id so far. A run killed at any moment is resumed by running the same command
again: its finished chunks are skipped without being read, unfinished ones are redone, and
since an id is the run's offset plus the image's position in the listing, every image ends
up exactly once. Byte-identical files (sha256) are indexed once; the others are listed in
``duplicates`` with the id they duplicate.

Shards: ``IndexSettings.shard = (i, n)`` makes this process take the chunks c with
c mod n = i of the run, so n processes (machines sharing the folder, or GPUs) split one run;
ids are listing positions, so they agree without talking. A shard writes its chunks and
stops; a plain run of the same command afterwards finds every chunk done and builds the FAISS
indexes. Shards that run at the same time do not see each other's files, so each may index a
copy of the same bytes: that final run keeps the smallest id and moves the others to
``duplicates``.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from compsearch.indexer.artifacts import identity_differences
from compsearch.indexer.manifest import Counts, IndexDirectoryError, IndexEntry, Manifest, Provenance, RunEntry
from compsearch.indexer.ranking_on_the_fly import ARTIFACTS
from compsearch.indexer.faiss_choice import AUTO, build_index as build_faiss_index
from compsearch.indexer.faiss_ondisk import LISTS_SUFFIX
from compsearch.indexer.known_files import KnownFiles, file_keys
from compsearch.indexer.store import (
    DUPLICATES,
    RESERVED_COLUMNS,
    SHARDS,
    SKIPPED,
    ChunkRows,
    IndexStore,
)
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.identity import EncoderIdentity
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import DEFAULT_CHUNK_SIZE, Batch, ImageRecord, ImageSource, iter_batches, open_source

Mode = Literal["resume", "append", "overwrite"]


@dataclass
class IndexSettings:
    index: str = AUTO  # a faiss index_factory string, or auto
    batch_size: int = 32
    workers: int = 2
    chunk_size: int = DEFAULT_CHUNK_SIZE
    memory_budget: int | None = None  # bytes for the FAISS indexes; None: half the machine's memory
    jpeg_on_device: bool = True  # a CUDA model's JPEGs are decoded on its GPU (nvjpeg), not by PIL
    progress: bool = True
    shard: tuple[int, int] = (0, 1)  # (i, n): this process's share of the run's chunks (module docstring)


@dataclass
class IndexSummary:
    """What a build did (the CLI prints it; ``--json`` prints it as is)."""

    folder: str
    run: int
    images: int  # indexed in the whole directory
    added: int  # by this run
    skipped: int
    duplicates: int
    already_indexed: int  # identical files (same path and bytes) found in the index already
    seconds: float
    images_per_second: float
    indexes: dict[str, str] = field(default_factory=dict)  # vector name → index_factory string
    shard: str | None = None  # "i/n" when this was one shard of the run (its indexes not built yet)
    chunks_left: int = 0  # chunks of the run no shard has finished yet


def compsearch_version() -> str:
    try:
        return version("compsearch")
    except PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _ChunkBuffer:
    """Rows of chunks still being read (workers interleave chunks), written when done."""

    def __init__(self, run: int, id_offset: int) -> None:
        self.run = run
        self.id_offset = id_offset
        self.chunks: dict[int, ChunkRows] = {}
        self.pieces: dict[int, dict[str, list[np.ndarray]]] = {}  # per chunk, each batch's vectors

    def get(self, chunk: int) -> ChunkRows:
        if chunk not in self.chunks:
            self.chunks[chunk] = ChunkRows(self.run, chunk, [], {}, [], [])
        return self.chunks[chunk]

    def vector_pieces(self, chunk: int, name: str) -> list[np.ndarray]:
        return self.pieces.setdefault(chunk, {}).setdefault(name, [])

    def pop(self, chunk: int) -> ChunkRows:
        """A finished chunk's rows, its vectors joined once (not re-copied per batch)."""
        rows = self.chunks.pop(chunk)
        rows.vectors = {name: np.concatenate(parts) for name, parts in self.pieces.pop(chunk, {}).items()}
        return rows

    def image_id(self, record: ImageRecord) -> int:
        return self.id_offset + record.position


def listed_path(record: ImageRecord) -> str | None:
    """The absolute path as listed, symlinks kept: a link is its own entry (a duplicate of
    its target), and the server decides what a link may point to."""
    return os.path.abspath(record.path) if record.path else None


def _row(record: ImageRecord, image_id: int, size: tuple[int, int], sha256: str) -> dict[str, Any]:
    row = {"id": image_id, "key": record.key, "path": listed_path(record),
           "sha256": sha256, "width": size[0], "height": size[1]}
    for name, value in record.metadata.items():  # carried columns never shadow ours
        row[f"metadata.{name}" if name in RESERVED_COLUMNS else name] = value
    return row


class Indexer:
    """Builds or extends one index directory with one encoder (see the module docstring)."""

    def __init__(self, out: str | Path, encoder: PropertyEncoder, settings: IndexSettings = IndexSettings(),
                 provenance: Provenance | None = None) -> None:
        self.store = IndexStore(out)
        self.encoder = encoder
        self.settings = settings
        self.provenance = provenance or Provenance()  # aligner / ranking files and ids, for the manifest

    # -- deciding what to do ----------------------------------------------------------------
    def _identity(self) -> EncoderIdentity:
        return self.encoder.identity()

    def _check_same_encoder(self, manifest: Manifest) -> None:
        differing = identity_differences(manifest.encoder, self._identity())
        if differing:
            raise IndexDirectoryError(
                f"{self.store.folder} was built with another model, weights, aligner or ranking "
                f"({'; '.join(differing[:3])})",
                "use the same --model/--weights/--aligner/--ranking, --out another folder, or --overwrite to rebuild",
            )

    def _clear(self) -> None:
        """Remove what an index directory holds (only our own files)."""
        for kind in (SHARDS, SKIPPED, DUPLICATES):
            shutil.rmtree(self.store.folder / kind, ignore_errors=True)
        for pattern in ("*.faiss", f"*{LISTS_SUFFIX}"):
            for path in self.store.folder.glob(pattern):
                path.unlink()
        self.store.manifest_path.unlink(missing_ok=True)

    def _start(self, source: ImageSource, mode: Mode) -> tuple[Manifest, RunEntry]:
        """The manifest and the run to work on (a new one, or the interrupted one)."""
        folder = self.store.folder
        shards = self.settings.shard[1]
        if shards > 1 and mode == "overwrite":
            raise CompsearchError("--overwrite with --shard would let each shard delete the others' work",
                                  f"delete {folder} once, then start the shards without --overwrite")
        if self.store.exists() and mode == "overwrite":
            self._clear()
        if folder.exists() and not folder.is_dir():
            raise CompsearchError(f"--out {folder} is a file", "pass a folder for the index")
        if not self.store.exists() and folder.is_dir() and any(
                p.name != ARTIFACTS and not p.name.startswith(".") for p in folder.iterdir()):  # .: a shard's temp file
            raise CompsearchError(f"--out {folder} exists and is not an index",
                                  "pass a new or empty folder, so no other files get mixed with the index")
        run_entry = {"source": source.description, "chunk_size": self.settings.chunk_size}
        if not self.store.exists():
            manifest = Manifest.new(self._identity(), self.provenance, compsearch_version(), _now())
            run_number, id_offset = 0, 0
        else:
            manifest = self.store.read_manifest()
            self.encoder.precision = manifest.encoder.precision  # every run computes as the first did
            self._check_same_encoder(manifest)
            last = manifest.runs[-1] if manifest.runs else None
            unfinished = last is not None and last.status != "complete"
            if unfinished and (last.source, last.chunk_size) == (source.description, self.settings.chunk_size):
                return manifest, last  # resume it
            if unfinished:
                raise CompsearchError(
                    f"{folder} holds an unfinished run over {last.source} (chunks of {last.chunk_size})",
                    "rerun that command to finish it first, or --overwrite to rebuild",
                )
            if mode != "append":
                raise CompsearchError(
                    f"{folder} is already a complete index of {last.source}",
                    "pass --append to add new files, or --overwrite to rebuild it",
                )
            run_number, id_offset = last.run + 1, self._max_id() + 1
        # shards starting together write the same run entry; the last write stands
        run = RunEntry(run=run_number, id_offset=id_offset, **run_entry, status="running", started=_now(), shards=shards)
        manifest.runs.append(run)
        self.store.write_manifest(manifest)  # before any work: a kill leaves a resumable run
        return manifest, run

    def _max_id(self) -> int:
        """The largest id indexed so far (-1 for none)."""
        table = self.store.read_table(SHARDS, columns=["id"])
        return int(table.column("id").to_numpy().max()) if table.num_rows else -1

    def _known_files(self) -> KnownFiles:
        """Every file indexed so far, by content (streamed from the shards, kept compact)."""
        dataset = self.store.dataset(SHARDS)
        return KnownFiles.from_batches(dataset.to_batches(columns=["id", "sha256", "path"])) if dataset else KnownFiles()

    # -- the pass -----------------------------------------------------------------------------
    def run(self, images: str | Path | ImageSource, mode: Mode = "resume") -> IndexSummary:
        source = open_source(images)
        manifest, run = self._start(source, mode)
        started = time.perf_counter()
        done = self.store.done_chunks(run.run)
        listed = sum(1 for _ in source.records())
        chunk_size = self.settings.chunk_size
        chunks = -(-listed // chunk_size)
        shard, shards = self.settings.shard
        sizes = {chunk: min(chunk_size, listed - chunk * chunk_size)  # this shard's chunks (all, unsharded)
                 for chunk in range(shard, chunks, shards)}
        finished_before = sum(sizes[chunk] for chunk in done if chunk in sizes)
        known = self._known_files()
        counts = {"added": 0, "skipped": 0, "duplicates": 0, "already_indexed": 0}
        buffer = _ChunkBuffer(run.run, run.id_offset)
        bar = tqdm(total=sum(sizes.values()), initial=finished_before, desc="indexing", unit="img", disable=not self.settings.progress,
                   smoothing=0.05)
        try:
            for batch in iter_batches(source, [self.encoder.model.preprocess], self.settings.batch_size,
                                      self.settings.workers, "skip", chunk_size, skip_chunks=done,
                                      partition=self.settings.shard, jpeg_device=self._jpeg_device()):
                self._take(batch, buffer, known, counts)
                known.settle()
                bar.update(len(batch) + len(batch.skipped))
                bar.set_postfix(skipped=counts["skipped"], duplicates=counts["duplicates"], refresh=False)
                if batch.chunk_done:
                    self.store.write_chunk(buffer.pop(batch.chunk))
        except KeyboardInterrupt:
            kept = len(self.store.done_chunks(run.run))
            raise CompsearchError(
                f"interrupted: {kept} finished chunk(s) of {chunk_size} images are kept in {self.store.folder}",
                "rerun the same command to continue where it stopped",
            ) from None
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        if shards > 1:  # the other shards may still be writing: a plain run builds the indexes
            left = set(range(chunks)) - self.store.done_chunks(run.run)
            return IndexSummary(**self._summary(run, seconds, counts), shard=f"{shard}/{shards}", chunks_left=len(left),
                                images=self.store.read_table(SHARDS, columns=["id"]).num_rows)
        if run.shards > 1:  # shards that ran at once may each have indexed a copy
            repeats = known.repeats()  # read from every shard at the start of this run
            self.store.move_to_duplicates(repeats)
            counts["duplicates"] += len(repeats)
        run.complete(_now(), seconds, counts)
        self._finish(manifest)
        return IndexSummary(**self._summary(run, seconds, counts), images=manifest.counts.images,
                            indexes={name: entry.factory for name, entry in manifest.indexes.items()})

    def _summary(self, run: RunEntry, seconds: float, counts: dict[str, int]) -> dict[str, Any]:
        """The fields of an :class:`IndexSummary` that every kind of run reports."""
        return dict(folder=str(self.store.folder), run=run.run, seconds=seconds,
                    images_per_second=counts["added"] / seconds if seconds > 0 else 0.0, **counts)

    def _jpeg_device(self) -> str | None:
        device = self.encoder.model.device
        return str(device) if device.type == "cuda" and self.settings.jpeg_on_device else None

    def _take(self, batch: Batch, buffer: _ChunkBuffer, known: KnownFiles, counts: dict[str, int]) -> None:
        """Deduplicate one batch, encode what is new, and add it to its chunk's rows."""
        rows = buffer.get(batch.chunk)
        for record, reason in batch.skipped:
            rows.skipped.append({"key": record.key, "path": str(record.path) if record.path else None, "reason": reason})
        counts["skipped"] += len(batch.skipped)
        fresh = []
        paths = [listed_path(record) for record in batch.records]
        keys = file_keys(batch.sha256, paths)
        found = known.find(keys.digests)  # written shards and this run's earlier batches
        for position, (record, sha256, path) in enumerate(zip(batch.records, batch.sha256, paths)):
            hit = found[position] or known.recent(keys.digests[position])  # or earlier in this batch
            if hit is not None:
                first_id, first_path = hit
                if first_path == keys.paths[position]:
                    counts["already_indexed"] += 1
                else:
                    rows.duplicates.append({"key": record.key, "path": path, "sha256": sha256, "duplicate_of": first_id})
                    counts["duplicates"] += 1
                continue
            known.add(keys.digests[position], buffer.image_id(record), keys.paths[position])
            fresh.append(position)
        if not fresh:
            return
        for name, values in self.encoder.encode(batch.pixels[0][fresh]).items():
            buffer.vector_pieces(batch.chunk, name).append(values.numpy())
        rows.rows += [_row(batch.records[i], buffer.image_id(batch.records[i]), batch.sizes[i], batch.sha256[i])
                      for i in fresh]
        counts["added"] += len(fresh)

    def _finish(self, manifest: Manifest) -> None:
        """Build every FAISS index from the shards and record the totals."""
        images = self.store.read_table(SHARDS, columns=["id"]).num_rows
        for name in self.encoder.names:
            dims = next((vectors.shape[1] for _, vectors in self.store.iter_vectors(name)), None)
            if dims is None:
                continue
            path = self.store.faiss_path(name)
            built = build_faiss_index(self.settings.index, dims, images, lambda name=name: self.store.iter_vectors(name),
                                      self.settings.memory_budget, path=path)
            manifest.indexes[name] = IndexEntry(
                file=path.name, factory=built.factory, ntotal=built.count, dim=dims,
                metric="inner_product", normalised=True, space=self.encoder.space,
                search_parameters=built.search_parameters, train_seconds=round(built.train_seconds, 3),
                add_seconds=round(built.add_seconds, 3), bytes=sum(file.stat().st_size for file in built.files),
            )
        manifest.counts = Counts(
            images=images,
            skipped=self.store.read_table(SKIPPED).num_rows,
            duplicates=self.store.read_table(DUPLICATES).num_rows,
        )
        manifest.updated = _now()
        self.store.write_manifest(manifest)
