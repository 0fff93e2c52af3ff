"""A compressed index (PQ) keeps its exact vectors beside it: its candidates are rescored with
them, so a search finds what an exact search finds, and the file follows every update."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from compsearch.indexer import exact_vectors
from compsearch.indexer.faiss_choice import build_index, normalised
from compsearch.indexer.faiss_tuning import RESCORING, RESCORING_KEY
from compsearch.indexer.finish import finish
from compsearch.indexer.info import format_info, index_info
from compsearch.indexer.integrity import full_check
from compsearch.indexer.manifest import Manifest, Provenance
from compsearch.indexer.repair import repair_index
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import ChunkRows, IndexStore
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.identity import EncoderIdentity
from compsearch.search import filtered
from compsearch.search.index import SearchIndex

COUNT, DIM = 3000, 32
PQ_SETTINGS = IndexSettings(index="IVF8,PQ16x4", progress=False)
VECTORS = normalised(np.random.default_rng(0).standard_normal((COUNT + 110, DIM), dtype=np.float32))
ENCODER = SimpleNamespace(names=["full"], space="model")


def write_rows(store: IndexStore, run: int, ids: list[int]) -> None:
    rows = [{"id": i, "key": f"{i}.jpg", "path": None, "sha256": f"{i:064x}", "width": 1, "height": 1} for i in ids]
    store.write_chunk(ChunkRows(run, 0, rows, {"full": VECTORS[ids]}, [], []))


def built_pq_index(folder: Path, settings: IndexSettings = PQ_SETTINGS) -> tuple[IndexStore, Manifest]:
    """COUNT rows and their compressed index (``IVF8,PQ16x4``), built by the finish stage."""
    store = IndexStore(folder)
    write_rows(store, 0, list(range(COUNT)))
    identity = EncoderIdentity("synthetic", "random-init", "blocks.0", "model", None, None, None, "fp32")
    manifest = Manifest.new(identity, Provenance(), "test", "now")
    finish(store, manifest, ENCODER, settings)
    return store, manifest


def recall(index: SearchIndex, ids: np.ndarray, queries: list[int], where: str | None = None) -> float:
    """recall@10 of id queries (filtered by ``where``) against exact search over ``ids``' vectors."""
    hits = 0
    for query in queries:
        exact = ids[np.argsort(-(VECTORS[ids] @ VECTORS[query]), kind="stable")[:10]]
        hits += len(set(exact) & {result.id for result in index.search(id=query, k=10, where=where).results})
    return hits / (10 * len(queries))


def test_a_pq_index_rescored_finds_what_exact_search_finds_and_its_vectors_follow_updates(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    store, manifest = built_pq_index(tmp_path)
    assert manifest.indexes["full"].exact_files == ["full.exact.npy"] and (tmp_path / "full.exact.npy").is_file()
    queries = list(range(0, COUNT, 60))
    index = SearchIndex(tmp_path)
    assert recall(index, np.arange(COUNT), queries) >= 0.95
    monkeypatch.setattr(filtered, "EXACT_SCAN_MAX", 0)  # a filter through FAISS's selector, rescored too
    assert recall(index, np.arange(1000, COUNT), queries, "id >= 1000") >= 0.95
    index._exact_vectors.clear()  # the codes alone, as before the exact vectors were kept
    assert recall(index, np.arange(COUNT), queries) < 0.8
    assert recall(index, np.arange(1000, COUNT), queries, "id >= 1000") < 0.8

    shard = store.shard_paths()[0]  # a sync: 50 rows leave, 100 arrive
    rows = pq.read_table(shard)
    store.rewrite_shard(shard, rows.filter(np.arange(COUNT) >= 50))
    write_rows(store, 1, list(range(COUNT, COUNT + 100)))
    finish(store, manifest, ENCODER, PQ_SETTINGS)
    entry = manifest.indexes["full"]
    assert entry.changed_since_build == 150  # updated, not rebuilt
    # 50 dead records of 3,100: kept; the 100 new vectors a segment of their own
    assert (entry.exact_files, entry.exact_dead) == (["full.exact.npy", "full.1.exact.npy"], 50)
    assert "(exact vectors: 2 files, 50 dead records)" in format_info(index_info(tmp_path))
    held = np.arange(50, COUNT + 100)
    index = SearchIndex(tmp_path)
    assert recall(index, held, list(range(COUNT, COUNT + 100, 5))) >= 0.95
    np.testing.assert_allclose(index.stored_vectors("full", [60, COUNT + 7]), index.rows.vectors("full", [60, COUNT + 7]),
                               atol=1e-6)
    assert full_check(tmp_path).damage == [] and {"full.exact.npy", "full.1.exact.npy"} <= set(manifest.files)
    monkeypatch.setattr(exact_vectors, "MAX_SEGMENTS", 2)  # the next update compacts
    write_rows(store, 2, list(range(COUNT + 100, COUNT + 110)))
    finish(store, manifest, ENCODER, PQ_SETTINGS)
    entry = manifest.indexes["full"]
    assert (entry.exact_files, entry.exact_dead) == (["full.2.exact.npy"], 0)
    assert sorted(path.name for path in tmp_path.glob("*.exact.npy")) == ["full.2.exact.npy"]  # the others deleted
    index = SearchIndex(tmp_path)
    np.testing.assert_allclose(index.stored_vectors("full", [60, COUNT + 105]),
                               index.rows.vectors("full", [60, COUNT + 105]), atol=1e-6)
    assert full_check(tmp_path).damage == []



def test_an_update_killed_before_its_manifest_is_finished_by_the_next(tmp_path: Path, monkeypatch) -> None:
    store, manifest = built_pq_index(tmp_path)
    write_rows(store, 1, list(range(COUNT, COUNT + 50)))

    def killed(self: IndexStore, written: Manifest) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(IndexStore, "write_manifest", killed)
        with pytest.raises(KeyboardInterrupt):
            finish(store, manifest, ENCODER, PQ_SETTINGS)  # its segment and FAISS file written, not the manifest
    manifest = store.read_manifest()
    assert manifest.indexes["full"].exact_files == ["full.exact.npy"] and (tmp_path / "full.1.exact.npy").is_file()
    finish(store, manifest, ENCODER, PQ_SETTINGS)  # the rerun's
    entry = manifest.indexes["full"]
    assert entry.exact_files == ["full.exact.npy", "full.1.exact.npy"] and entry.ntotal == COUNT + 50
    index = SearchIndex(tmp_path)
    np.testing.assert_allclose(index.stored_vectors("full", [COUNT + 20]), index.rows.vectors("full", [COUNT + 20]),
                               atol=1e-6)
    assert full_check(tmp_path).damage == []


def test_damaged_exact_vectors_are_refused_at_open_and_rebuilt_by_repair(tmp_path: Path) -> None:
    built_pq_index(tmp_path)
    exact = tmp_path / "full.exact.npy"
    exact.write_bytes(exact.read_bytes()[:-100])  # truncated
    with pytest.raises(CompsearchError, match="full.exact.npy.*--repair"):
        SearchIndex(tmp_path).search(id=5, k=3)
    report = repair_index(tmp_path)
    assert report.rebuilt == ["full.faiss"] and not report.removed
    assert SearchIndex(tmp_path).search(id=5, k=3).results[0].id == 5


def test_a_compressed_index_is_tuned_for_its_rescored_recall() -> None:
    def stream():
        for start in range(0, COUNT, 1000):
            yield np.arange(start, start + 1000), VECTORS[start:start + 1000]

    built = build_index("IVF16,PQ16x4", DIM, COUNT, stream)  # its codes alone reach about half
    assert built.recall >= 0.95 and built.search_parameters["nprobe"] <= 16


def test_codes_too_coarse_for_the_default_depth_are_rescored_as_deep_as_the_build_chose(tmp_path: Path) -> None:
    manifest = built_pq_index(tmp_path, IndexSettings(index="IVF16,PQ2x4", progress=False))[1]
    assert manifest.indexes["full"].search_parameters[RESCORING_KEY] > RESCORING  # tuned deeper
    index = SearchIndex(tmp_path)
    queries = list(range(0, COUNT, 60))
    assert recall(index, np.arange(COUNT), queries) >= 0.95
    index.rescoring = RESCORING  # the default depth: not enough for these codes
    assert recall(index, np.arange(COUNT), queries) < 0.9
