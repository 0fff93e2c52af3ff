"""FAISS indexes updated after a sync instead of rebuilt: they end holding exactly the shards'
ids, search as a fresh build of the same vectors would (exact types), decline where a rebuild
is due, and leave the previous index whole when interrupted."""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from compsearch.indexer.faiss_choice import build_index, normalised
from compsearch.indexer.faiss_ondisk import read_faiss
from compsearch.indexer.faiss_update import REBUILD_SHARE, held_ids, update_index
from compsearch.indexer.finish import finish
from compsearch.indexer.info import format_info, index_info
from compsearch.indexer.manifest import Manifest, Provenance
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import SHARDS, ChunkRows, IndexStore
from compsearch.mapping.identity import EncoderIdentity

DIM = 16
COUNT = 2_000
rng = np.random.default_rng(0)
VECTORS = {i: v for i, v in enumerate(rng.standard_normal((COUNT + 200, DIM), dtype=np.float32))}


def stream(ids: list[int], size: int = 500):
    def chunks():
        for start in range(0, len(ids), size):
            part = np.array(ids[start:start + size], np.int64)
            yield part, np.stack([VECTORS[i] for i in part])
    return chunks


def vectors_of(only: np.ndarray):
    return stream(sorted(only.tolist()), 37)()  # parts of another size than the build's


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def changed_ids(removed: int, added: int) -> list[int]:
    """The first ``COUNT`` ids less ``removed`` of them (spread out), plus ``added`` new ones."""
    gone = set(range(0, COUNT, COUNT // removed)) if removed else set()
    return [i for i in range(COUNT) if i not in gone] + list(range(COUNT, COUNT + added))


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ4", "HNSW16"])
def test_an_update_holds_exactly_the_new_ids_and_finds_the_added_vectors(factory: str, tmp_path: Path) -> None:
    path = tmp_path / "full.faiss"
    build_index(factory, DIM, COUNT, stream(list(range(COUNT))), path=path)
    ids = changed_ids(removed=0 if factory == "HNSW16" else 40, added=60)  # HNSW can only add
    update = update_index(path, np.array(ids, np.int64), vectors_of, changed_before=0, exact=factory == "Flat")
    assert update is not None and update.ntotal == len(ids) and update.added == 60
    index = read_faiss(path)
    assert sorted(held_ids(index).tolist()) == ids
    if "IVF" in factory:
        index.nprobe = 16
    new = normalised(np.stack([VECTORS[i] for i in range(COUNT, COUNT + 60)]))
    found = index.search(new, 1)[1].ravel()
    assert (found == np.arange(COUNT, COUNT + 60)).mean() >= (0.5 if "PQ" in factory else 1.0)


def test_an_updated_flat_index_answers_as_one_built_anew(tmp_path: Path) -> None:
    ids = changed_ids(removed=300, added=200)
    build_index("Flat", DIM, COUNT, stream(list(range(COUNT))), path=tmp_path / "updated.faiss")
    update_index(tmp_path / "updated.faiss", np.array(ids, np.int64), vectors_of, changed_before=0, exact=True)
    build_index("Flat", DIM, len(ids), stream(ids), path=tmp_path / "fresh.faiss")
    queries = normalised(rng.standard_normal((50, DIM), dtype=np.float32))
    updated, fresh = (read_faiss(tmp_path / name).search(queries, 10) for name in ("updated.faiss", "fresh.faiss"))
    assert np.array_equal(updated[1], fresh[1]) and np.allclose(updated[0], fresh[0], atol=1e-6)


@pytest.mark.parametrize(("factory", "changed_before", "removed", "added"), [
    ("IVF16,Flat", 0, 100, 150),  # 250 of 2,000 changed: past the share
    ("IVF16,Flat", int(REBUILD_SHARE * COUNT) - 10, 10, 10),  # small, but after earlier updates
    ("HNSW16", 0, 10, 0),  # a graph cannot remove
])
def test_a_rebuild_is_asked_for_and_the_index_left_as_it_was(factory: str, changed_before: int, removed: int,
                                                              added: int, tmp_path: Path) -> None:
    path = tmp_path / "full.faiss"
    build_index(factory, DIM, COUNT, stream(list(range(COUNT))), path=path)
    before = {file: digest(file) for file in tmp_path.iterdir()}
    ids = np.array(changed_ids(removed, added), np.int64)
    assert update_index(path, ids, vectors_of, changed_before, exact=False) is None
    assert {file: digest(file) for file in tmp_path.iterdir()} == before


def test_a_flat_index_is_updated_however_much_changed(tmp_path: Path) -> None:
    path = tmp_path / "full.faiss"
    build_index("Flat", DIM, COUNT, stream(list(range(COUNT))), path=path)
    ids = np.array(changed_ids(removed=1000, added=200), np.int64)
    assert update_index(path, ids, vectors_of, changed_before=5 * COUNT, exact=True) is not None


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_an_interrupted_update_leaves_the_previous_index_whole(factory: str, tmp_path: Path) -> None:
    path = tmp_path / "full.faiss"
    build_index(factory, DIM, COUNT, stream(list(range(COUNT))), path=path)
    before = {file: digest(file) for file in tmp_path.iterdir()}

    def interrupted(only: np.ndarray):
        yield from vectors_of(only[:10])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        update_index(path, np.array(changed_ids(10, 50), np.int64), interrupted, 0, exact=factory == "Flat")
    assert {file: digest(file) for file in tmp_path.iterdir()} == before  # no scratch left either


def write_rows(store: IndexStore, run: int, ids: list[int]) -> None:
    rows = [{"id": i, "key": f"{i}.jpg", "path": None, "sha256": f"{i:064x}", "width": 1, "height": 1} for i in ids]
    store.write_chunk(ChunkRows(run, 0, rows, {"full": np.stack([VECTORS[i] for i in ids])}, [], []))


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_the_finish_stage_updates_small_changes_and_rebuilds_past_the_share(factory: str, tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    write_rows(store, 0, list(range(COUNT)))
    identity = EncoderIdentity("synthetic", "random-init", "blocks.0", "model", None, None, None, "fp32")
    manifest = Manifest.new(identity, Provenance(), "test", "now")
    encoder, settings = SimpleNamespace(names=["full"], space="model"), IndexSettings(index=factory, progress=False)
    finish(store, manifest, encoder, settings)
    built = manifest.indexes["full"]

    def sync(removed: list[int], added: list[int], run: int) -> None:
        for shard in store.shard_paths():
            rows = pq.read_table(shard)
            store.rewrite_shard(shard, rows.filter(~np.isin(rows.column("id").to_numpy(), removed)))
        if added:
            write_rows(store, run, added)
        finish(store, manifest, encoder, settings)

    sync([3, 5, 8], list(range(COUNT, COUNT + 20)), 1)
    entry = manifest.indexes["full"]
    assert entry.ntotal == COUNT + 17 and entry.changed_since_build == 23
    assert "(23 ids updated since built)" in format_info(index_info(tmp_path))
    assert entry.train_seconds == built.train_seconds and entry.search_parameters == built.search_parameters
    assert sorted(held_ids(read_faiss(store.faiss_path("full"))).tolist()) == sorted(
        store.read_table(SHARDS, columns=["id"]).column("id").to_pylist())
    sync(list(range(100, 400)), [], 2)  # 300 more: an inverted file is rebuilt, a flat one updated
    assert manifest.indexes["full"].changed_since_build == (0 if "IVF" in factory else 323)
    assert manifest.indexes["full"].ntotal == COUNT - 283
