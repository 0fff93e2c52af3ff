"""Building an index: the run's lifecycle in the manifest around four stages.

- *plan* (:mod:`mapping.images.plan`): the listing cut into work units, one per chunk,
  leaving out the chunks already written and, for a shard, the other shards' chunks;
- *encode* (:mod:`indexer.encode`): a unit's batches → its rows (de-duplicated, encoded);
- *write* (:meth:`indexer.store.IndexStore.write_chunk`): rows → one shard, atomically;
- *finish* (:mod:`indexer.finish`): de-duplication across shards, FAISS indexes, totals.

:class:`Indexer` decides which run to work on (a new one, an append, or the interrupted
one), has a runner (:mod:`indexer.runners`) drive encode and write over the plan's units,
and finishes the run when every unit is written.

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

One writer: a run holds the directory's lock (:mod:`indexer.lock`) from start to finish;
the shards of a run share it, a plain run holds it alone.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from compsearch.indexer.artifacts import identity_differences
from compsearch.indexer.encode import RunIds, UnitEncoder, known_files
from compsearch.indexer.faiss_ondisk import LISTS_SUFFIX
from compsearch.indexer.finish import deduplicate, finish, now
from compsearch.indexer.lock import writing
from compsearch.indexer.manifest import IndexDirectoryError, Manifest, Provenance, RunEntry, StoreEntry
from compsearch.indexer.ranking_on_the_fly import ARTIFACTS
from compsearch.indexer.runners import Runner, run_in_process
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import (
    DUPLICATES,
    SHARDS,
    SKIPPED,
    STORE,
    VECTORS,
    IndexStore,
)
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.identity import EncoderIdentity
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import ImageSource, open_source
from compsearch.mapping.images.plan import plan

Mode = Literal["resume", "append", "overwrite"]
__all__ = ["IndexSettings", "IndexSummary", "Indexer", "Mode", "compsearch_version"]


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


class Indexer:
    """Builds or extends one index directory with one encoder (see the module docstring)."""

    def __init__(self, out: str | Path, encoder: PropertyEncoder, settings: IndexSettings = IndexSettings(),
                 provenance: Provenance | None = None) -> None:
        self.store = IndexStore(out)
        self.encoder = encoder
        self.settings = settings
        self.provenance = provenance or Provenance()  # aligner / ranking files and ids, for the manifest
        self.store_dtype = settings.store  # the component store's dtype; an existing index's own

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
        for kind in (SHARDS, SKIPPED, DUPLICATES, STORE, VECTORS):
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
        if not self.store.exists() and folder.is_dir() and any(
                p.name != ARTIFACTS and not p.name.startswith(".") for p in folder.iterdir()):  # .: a shard's temp file
            raise CompsearchError(f"--out {folder} exists and is not an index",
                                  "pass a new or empty folder, so no other files get mixed with the index")
        run_entry = {"source": source.description, "chunk_size": self.settings.chunk_size}
        if not self.store.exists():
            manifest = Manifest.new(self._identity(), self.provenance, compsearch_version(), now())
            if self.store_dtype is not None:
                manifest.store = StoreEntry(self.store_dtype, self.encoder.model.weights_id)
            run_number, id_offset = 0, 0
        else:
            manifest = self.store.read_manifest()
            self.encoder.precision = manifest.encoder.precision  # every run computes as the first did
            self.store_dtype = manifest.store.dtype if manifest.store else None  # and stores as it did
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
            if (folder / VECTORS).is_dir():
                raise CompsearchError(f"{folder} has properties rebuilt from its component store (`add-property`, "
                                      "`reindex`), which an append does not extend yet",
                                      "rebuild it with `compsearch index … --overwrite`")
            run_number, id_offset = last.run + 1, self._max_id() + 1
        # shards starting together write the same run entry; the last write stands
        run = RunEntry(run=run_number, id_offset=id_offset, **run_entry, status="running", started=now(), shards=shards)
        manifest.runs.append(run)
        self.store.write_manifest(manifest)  # before any work: a kill leaves a resumable run
        return manifest, run

    def _max_id(self) -> int:
        """The largest id indexed so far (-1 for none)."""
        table = self.store.read_table(SHARDS, columns=["id"])
        return int(table.column("id").to_numpy().max()) if table.num_rows else -1

    # -- the pass: plan, encode and write (here), finish ---------------------------------------
    def run(self, images: str | Path | ImageSource, mode: Mode = "resume") -> IndexSummary:
        source = open_source(images)
        folder = self.store.folder
        if folder.exists() and not folder.is_dir():
            raise CompsearchError(f"--out {folder} is a file", "pass a folder for the index")
        with writing(folder, shared=self.settings.shard[1] > 1):  # one writer, or the shards of one run
            return self._run(source, mode)

    def _run(self, source: ImageSource, mode: Mode) -> IndexSummary:
        manifest, run = self._start(source, mode)
        started = time.perf_counter()
        ids = RunIds(run.run, run.id_offset)
        work = plan(source, self.settings.chunk_size, self.settings.shard, self.store.done_chunks(ids.run))
        stage = UnitEncoder(self.encoder, known_files(self.store), ids, self.store_dtype)
        counts = self._runner()(self.store, source, work, stage, self.settings)
        seconds = time.perf_counter() - started
        shard, shards = self.settings.shard
        if shards > 1:  # the other shards may still be writing: a plain run builds the indexes
            left = set(range(work.chunks)) - self.store.done_chunks(ids.run)
            return IndexSummary(**self._summary(run, seconds, counts), shard=f"{shard}/{shards}", chunks_left=len(left),
                                images=self.store.read_table(SHARDS, columns=["id"]).num_rows)
        if run.shards > 1 or self.settings.backend == "ray":  # units that ran at once may each have indexed a copy
            counts["duplicates"] += deduplicate(self.store)
        run.complete(now(), seconds, counts)
        finish(self.store, manifest, self.encoder, self.settings)
        return IndexSummary(**self._summary(run, seconds, counts), images=manifest.counts.images,
                            indexes={name: entry.factory for name, entry in manifest.indexes.items()})

    def _runner(self) -> Runner:
        if self.settings.backend == "ray":  # Ray is imported only when asked for
            from compsearch.indexer.ray_runner import run_on_ray

            return run_on_ray
        return run_in_process

    def _summary(self, run: RunEntry, seconds: float, counts: dict[str, int]) -> dict[str, Any]:
        """The fields of an :class:`IndexSummary` that every kind of run reports."""
        return dict(folder=str(self.store.folder), run=run.run, seconds=seconds,
                    images_per_second=counts["added"] / seconds if seconds > 0 else 0.0, **counts)
