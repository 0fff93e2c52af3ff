"""Building an index: the run's lifecycle in the manifest around four stages.

- *plan* (:func:`indexer.sync.plan_sync`, then :mod:`mapping.images.plan`): the listing
  against the index's rows — what is new or changed (to encode), moved, removed, unchanged —
  and the files to encode cut into work units, one per chunk (for a shard, its chunks);
- *encode* (:mod:`indexer.encode`): a unit's batches → its rows (de-duplicated, encoded);
- *write* (:meth:`indexer.store.IndexStore.write_chunk`): rows → one shard, atomically;
- *finish* (:func:`indexer.sync.apply_sync`, :mod:`indexer.finish`): removed rows leave and
  moved ones are re-pathed, de-duplication across shards, FAISS indexes, totals.

Runs: every invocation plans a new run from the files (run 0 builds, each rerun updates the
index to the folder's current content; ``append`` only adds). Its ids are its ``id_offset``,
after every id any run reserved, plus the file's position in its plan: an id is a file's for
good (a moved file keeps it) and never reused. A run killed at any moment (or stopped by
Ctrl-C, which keeps every image encoded, also of a unit half done) is followed up by running
the same command again: it plans from the files, so what the killed run wrote is rows already
indexed, and files added or deleted meanwhile are added or removed. A rerun that finds the
index up to date writes nothing. Byte-identical files (sha256) are indexed once; the others
are listed in ``duplicates`` with the id they duplicate.

Shards: ``IndexSettings.shard = (i, n)`` makes this process take the chunks c with
c mod n = i of the run's plan, so n processes (machines sharing the folder, or GPUs) split
one run; a shard joining a run another started plans without that run's own parts, so they
agree without talking while the folder is unchanged. A shard writes its chunks and stops; a
plain run of the same command afterwards plans what the shards left (nothing, if they all
finished) and builds the FAISS indexes. Shards that run at the same time do not see each
other's files, so each may index a copy of the same bytes: that final run keeps the smallest
id and moves the others to ``duplicates``.

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
from compsearch.indexer.component_store import complete_vectors
from compsearch.indexer.encode import RunIds, UnitEncoder, known_files
from compsearch.indexer.faiss_ondisk import LISTS_SUFFIX
from compsearch.indexer.finish import deduplicate, finish, now
from compsearch.indexer.lock import writing
from compsearch.indexer.manifest import (
    RUN_COUNTS,
    IndexDirectoryError,
    Manifest,
    Provenance,
    RunEntry,
    StoreEntry,
)
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
from compsearch.indexer.sync import SyncPlan, apply_sync, plan_sync
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.identity import EncoderIdentity
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import ImageSource, open_source
from compsearch.mapping.images.plan import plan_listing

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
    already_indexed: int  # files found indexed (same path and bytes) when read, e.g. written by a shard
    removed: int  # rows of files gone from the collection
    moved: int  # files found under another path (same bytes): re-pathed, same id, not re-encoded
    changed: int  # files whose bytes changed: re-encoded (a new id), the old row removed
    unchanged: int  # files the index already held as they are
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

    def _open(self, source: ImageSource, mode: Mode) -> tuple[Manifest, RunEntry | None]:
        """The manifest (a new one for a new index), and the unfinished run of the shards this
        process joins (None: this invocation plans a run of its own)."""
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
        if not self.store.exists():
            manifest = Manifest.new(self._identity(), self.provenance, compsearch_version(), now())
            if self.store_dtype is not None:
                manifest.store = StoreEntry(self.store_dtype, self.encoder.model.weights_id)
            return manifest, None
        manifest = self.store.read_manifest()
        self.encoder.precision = manifest.encoder.precision  # every run computes as the first did
        self.store_dtype = manifest.store.dtype if manifest.store else None  # and stores as it did
        self._check_same_encoder(manifest)
        last = manifest.runs[-1] if manifest.runs else None
        if (shards > 1 and last is not None and last.status == "running"
                and (last.source, last.chunk_size, last.shards) == (source.description, self.settings.chunk_size, shards)):
            return manifest, last  # another shard's run: plan as it did, without the run's own parts
        return manifest, None

    def _new_run(self, manifest: Manifest, source: ImageSource, work: SyncPlan, own: int | None) -> RunEntry:
        """A run for ``work``, its ids after every id any run has reserved or indexed (never
        reused, whatever happened to the rows), written before any work: a kill leaves it on
        record, and the rerun plans again from the files."""
        for earlier in manifest.runs:
            if earlier.status == "running":
                earlier.status = "stopped"  # re-planned by this run
        id_offset = max([self._max_id(own) + 1, *(run.id_offset + run.ids for run in manifest.runs)])
        # shards starting together write the same run entry; the last write stands
        run = RunEntry(run=_next_run(manifest), id_offset=id_offset, ids=len(work.todo),
                       source=source.description, chunk_size=self.settings.chunk_size, status="running",
                       started=now(), shards=self.settings.shard[1])
        manifest.runs.append(run)
        self.store.write_manifest(manifest)
        return run

    def _max_id(self, except_run: int | None) -> int:
        """The largest id indexed so far, outside ``except_run``'s parts (-1 for none)."""
        dataset = self.store.dataset(SHARDS, except_run=except_run)
        ids = dataset.to_table(columns=["id"]).column("id").to_numpy() if dataset is not None else []
        return int(ids.max()) if len(ids) else -1

    # -- the pass: plan, encode and write (here), finish ---------------------------------------
    def run(self, images: str | Path | ImageSource, mode: Mode = "resume") -> IndexSummary:
        source = open_source(images)
        folder = self.store.folder
        if folder.exists() and not folder.is_dir():
            raise CompsearchError(f"--out {folder} is a file", "pass a folder for the index")
        with writing(folder, shared=self.settings.shard[1] > 1):  # one writer, or the shards of one run
            return self._run(source, mode)

    def _run(self, source: ImageSource, mode: Mode) -> IndexSummary:
        manifest, joined = self._open(source, mode)
        started = time.perf_counter()
        # shards starting together each open a run of the same number: each plans (and numbers
        # its ids) without that run's parts, whatever another shard has written meanwhile
        own = joined.run if joined else _next_run(manifest) if self.settings.shard[1] > 1 else None
        work = plan_sync(source, self.store, append=mode == "append", except_run=own)
        last = manifest.runs[-1] if manifest.runs else None
        if joined is None and last is not None and last.status == "running":
            work.leave_failures_of(last.run)
            if not work.todo:
                joined = last  # nothing left to encode (e.g. every shard finished): this finishes that run
        if joined is None and work.up_to_date and last is not None and last.status == "complete":
            # a nightly rerun: no new run, no rebuild (the files skipped before fail unchanged)
            counts = {**dict.fromkeys(RUN_COUNTS, 0), **work.counts(), "skipped": work.skipped_again}
            return IndexSummary(**self._summary(last, time.perf_counter() - started, counts),
                                images=manifest.counts.images,
                                indexes={name: entry.factory for name, entry in manifest.indexes.items()})
        run = joined or self._new_run(manifest, source, work, own)
        ids = RunIds(run.run, run.id_offset)
        listing = work.todo
        units = plan_listing(len(listing), self.settings.chunk_size, self.settings.shard, self.store.done_chunks(ids.run))
        stage = UnitEncoder(self.encoder, known_files(self.store, work.removed), ids, self.store_dtype)
        counts = {**self._runner()(self.store, listing, units, stage, self.settings), **work.counts()}
        counts["added"] = max(counts["added"] - work.changed, 0)  # new files; the changed ones are counted apart
        seconds = time.perf_counter() - started
        shard, shards = self.settings.shard
        if shards > 1:  # the other shards may still be writing: a plain run builds the indexes
            left = set(range(units.chunks)) - self.store.done_chunks(ids.run)
            return IndexSummary(**self._summary(run, seconds, counts), shard=f"{shard}/{shards}", chunks_left=len(left),
                                images=self.store.read_table(SHARDS, columns=["id"]).num_rows)
        apply_sync(self.store, work, run.run)
        if any(earlier.shards > 1 for earlier in manifest.runs) or self.settings.backend == "ray":
            counts["duplicates"] += deduplicate(self.store)  # units that ran at once may each have indexed a copy
        complete_vectors(self.store)  # properties added from the store: the new shards' vectors beside them
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


def _next_run(manifest: Manifest) -> int:
    return manifest.runs[-1].run + 1 if manifest.runs else 0
