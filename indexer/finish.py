"""The finish stage: once every unit of a run is written, one pass over the shards.

- de-duplication across shards: processes of a ``--shard I/N`` run that ran at the same time
  did not see each other's files, so each may have indexed a copy of the same bytes; the
  smallest id is kept and the others move to ``duplicates``;
- the FAISS indexes, one per vector name: after a sync, updated to hold the shards' ids
  (:mod:`indexer.faiss_update`); else, or where an update will not do, built from the shards
  (streamed) and written atomically (inverted files part by part, merged on disk:
  :mod:`indexer.faiss_choice`);
- the manifest's indexes and counts, the component store's layout, and a record of every
  file (:mod:`indexer.integrity`).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import numpy as np

from compsearch.indexer.component_store import written_layout
from compsearch.indexer.encode import known_files
from compsearch.indexer.exact_vectors import ExactFiles, exact_path, remove_unlisted, update_exact_vectors, \
    write_exact_vectors
from compsearch.indexer.faiss_choice import AUTO, choose_factory, keeps_exact_vectors
from compsearch.indexer.faiss_choice import build_index as build_faiss_index
from compsearch.indexer.faiss_update import update_index
from compsearch.indexer.integrity import record_files
from compsearch.indexer.manifest import Counts, IndexEntry, Manifest
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import DUPLICATES, SHARDS, SKIPPED, IndexStore, table_ids
from compsearch.mapping.encoder import PropertyEncoder


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def deduplicate(store: IndexStore) -> int:
    """Move every repeated file's rows but the first's to ``duplicates``; how many moved."""
    repeats = known_files(store).repeats()
    store.move_to_duplicates(repeats)
    return len(repeats)


def build_indexes(store: IndexStore, names: list[str], space: str, settings: IndexSettings) -> dict[str, IndexEntry]:
    """Build and write each vector name's FAISS index (vectors in ``space``), and beside a
    compressed one its exact vectors (:mod:`indexer.exact_vectors`); the manifest entry of each."""
    images = store.read_table(SHARDS, columns=["id"]).num_rows
    entries = {}
    for name in names:
        dims = next((vectors.shape[1] for _, vectors in store.iter_vectors(name)), None)
        if dims is None:
            continue
        path = store.faiss_path(name)  # an inverted file's lists go beside it, merged on disk
        stream = lambda name=name: store.iter_vectors(name)  # noqa: E731 - read again per pass
        built = build_faiss_index(settings.index, dims, images, stream, settings.memory_budget, path=path)
        files, exact = list(built.files), exact_path(path)
        compressed = not keeps_exact_vectors(built.index)
        if compressed:
            write_exact_vectors(exact, stream(), built.count, dims)
            files.append(exact)
        else:
            exact.unlink(missing_ok=True)  # an earlier compressed index's
        entries[name] = IndexEntry(
            file=path.name, factory=built.factory, ntotal=built.count, dim=dims,
            metric="inner_product", normalised=True, space=space,
            search_parameters=built.search_parameters, train_seconds=round(built.train_seconds, 3),
            add_seconds=round(built.add_seconds, 3), bytes=sum(file.stat().st_size for file in files),
            exact_files=[exact.name] if compressed else [],
        )
    return entries


def updated_entry(store: IndexStore, name: str, entry: IndexEntry, ids: np.ndarray, space: str,
                  settings: IndexSettings) -> IndexEntry | None:
    """``name``'s index updated to hold the shards' ``ids`` (:mod:`indexer.faiss_update`) and
    its new manifest entry; ``None`` where it is to be built anew: the settings now ask for
    another type (``auto``: for the new size), the vectors are in another space, the update
    declines, or faiss cannot read or change the file."""
    path = store.faiss_path(name)
    wanted = choose_factory(len(ids), entry.dim, settings.memory_budget) if settings.index == AUTO else settings.index
    if wanted != entry.factory or entry.space != space or not path.is_file():
        return None
    vectors_of = lambda only: store.iter_vectors(name, only)  # noqa: E731
    try:
        update = update_index(path, ids, vectors_of, entry.changed_since_build, exact=entry.factory == "Flat")
        if update is None:
            return None
        exact = ExactFiles(entry.exact_files, entry.exact_dead)
        if exact.files:
            exact = update_exact_vectors(path, exact, ids, vectors_of)[0]
        files = list(update.files) + [store.folder / name for name in exact.files]
    except (RuntimeError, ValueError, OSError):  # a damaged or unreadable file: built anew
        return None
    return replace(entry, ntotal=update.ntotal, bytes=sum(file.stat().st_size for file in files),
                   changed_since_build=entry.changed_since_build + update.removed + update.added,
                   exact_files=exact.files, exact_dead=exact.dead)


def finish(store: IndexStore, manifest: Manifest, encoder: PropertyEncoder, settings: IndexSettings) -> None:
    """Bring the indexes up to date with the shards, updated where they can be and built where
    not, and record them and the totals in the manifest."""
    ids = table_ids(store.read_table(SHARDS, columns=["id"]))
    rebuild = []
    for name in encoder.names:
        entry = manifest.indexes.get(name)
        updated = entry and updated_entry(store, name, entry, ids, encoder.space, settings)
        if updated:
            manifest.indexes[name] = updated
        else:
            rebuild.append(name)
    manifest.indexes.update(build_indexes(store, rebuild, encoder.space, settings))
    record_totals(store, manifest)


def record_totals(store: IndexStore, manifest: Manifest) -> None:
    """Write the manifest with the directory's totals and the record of its files as they are now."""
    manifest.counts = Counts(
        images=store.read_table(SHARDS, columns=["id"]).num_rows,
        skipped=store.read_table(SKIPPED).num_rows,
        duplicates=store.read_table(DUPLICATES).num_rows,
    )
    if manifest.store is not None:
        manifest.store.layout = written_layout(store)
    record_files(store, manifest)
    manifest.updated = now()
    store.write_manifest(manifest)
    remove_unlisted(store.folder, {name for entry in manifest.indexes.values() for name in entry.exact_files})
