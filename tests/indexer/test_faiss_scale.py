"""FAISS indexes built part by part and merged on disk, and nprobe chosen for a target recall."""
from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from compsearch.indexer.faiss_choice import build_index, choose_factory, new_index, normalised
from compsearch.indexer.faiss_ondisk import add_parts, lists_path, merge_parts, read_faiss
from compsearch.indexer.faiss_tuning import HeldOut, set_search_parameters
from compsearch.indexer.manifest import IndexDirectoryError
from compsearch.mapping.errors import CompsearchError
from compsearch.search.filtered import search_parameters
from compsearch.search.index import read_faiss_index

DIM = 32
SHARD = 1500


def planted(count: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Vectors around ``clusters`` fixed centres (the same centres for every seed)."""
    centres = np.random.default_rng(99).standard_normal((clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return centres[rng.integers(clusters, size=count)] + 0.6 * rng.standard_normal((count, DIM), dtype=np.float32)


@pytest.fixture(scope="module")
def collection() -> tuple[np.ndarray, np.ndarray]:
    vectors = planted(9000, seed=1)
    return np.arange(len(vectors), dtype=np.int64) * 7 + 3, vectors  # ids unlike row numbers


def shards(collection: tuple[np.ndarray, np.ndarray]):
    ids, vectors = collection
    return lambda: ((ids[i:i + SHARD], vectors[i:i + SHARD]) for i in range(0, len(ids), SHARD))


def exact_top(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int = 10) -> np.ndarray:
    scores = normalised(queries) @ normalised(vectors).T
    return ids[np.argsort(-scores, axis=1)[:, :k]]


def test_merged_on_disk_index_answers_like_one_built_in_memory(collection, tmp_path: Path) -> None:
    ids, vectors = collection
    queries = normalised(planted(50, seed=2))
    for factory in ("IVF32,Flat", "IVF32_HNSW16,PQ8x4"):
        trained = new_index(factory, DIM)
        trained.train(normalised(vectors[:4000]))
        in_memory = faiss.clone_index(trained)
        in_memory.add_with_ids(normalised(vectors), ids)
        folder = tmp_path / factory
        folder.mkdir()
        parts = add_parts(trained, ((i, normalised(v)) for i, v in shards(collection)()), folder, workers=2)
        assert len(parts) == 6
        on_disk = merge_parts(trained, parts, folder / "p.faiss", exact_lookup=False)
        assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(on_disk).invlists),
                          faiss.OnDiskInvertedLists)
        for index in (in_memory, on_disk):
            set_search_parameters(index, {"nprobe": 8})
        expected, found = in_memory.search(queries, 10), on_disk.search(queries, 10)
        np.testing.assert_array_equal(found[1], expected[1])
        np.testing.assert_array_equal(found[0], expected[0])
        assert on_disk.ntotal == len(ids) and trained.ntotal == 0  # the trained index is left empty for more merges


def test_build_to_a_path_equals_the_in_memory_build(collection, tmp_path: Path) -> None:
    in_memory = build_index("IVF32,Flat", DIM, 9000, shards(collection))
    on_disk = build_index("IVF32,Flat", DIM, 9000, shards(collection), path=tmp_path / "p.faiss")
    assert on_disk.files == [tmp_path / "p.faiss", tmp_path / "p.ivfdata"] and not in_memory.files
    assert on_disk.search_parameters == in_memory.search_parameters
    queries = normalised(planted(50, seed=3))
    expected, found = in_memory.index.search(queries, 10), on_disk.index.search(queries, 10)
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_array_equal(found[0], expected[0])
    ids, vectors = collection
    np.testing.assert_array_equal(on_disk.index.reconstruct(int(ids[5])), normalised(vectors[5:6])[0])  # by store id
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p.faiss", "p.ivfdata"]  # no parts left behind
    faiss.write_index(in_memory.index, str(tmp_path / "one.faiss"))  # lists inside the file, memory-mapped
    np.testing.assert_array_equal(read_faiss(tmp_path / "one.faiss").search(queries, 10)[1], expected[1])


def test_nprobe_is_the_cheapest_reaching_the_target_recall_and_is_recorded(collection, tmp_path: Path) -> None:
    ids, vectors = collection
    built = build_index("IVF64,Flat", DIM, 9000, shards(collection), path=tmp_path / "p.faiss", target_recall=0.95)
    nprobe = built.search_parameters["nprobe"]
    assert 1 < nprobe < 64 and built.recall >= 0.95 and built.tuning_queries == 500
    assert built.manifest_entry() == {"search_parameters": {"nprobe": nprobe}, "recall_at_10": built.recall,
                                      "target_recall": 0.95, "tuning_queries": 500, "on_disk": True}
    # on fresh vectors of the same collection (never indexed), as searched after reopening
    queries = planted(300, seed=4)
    reopened = read_faiss_index(tmp_path / "p.faiss", built.search_parameters)
    truth = exact_top(queries, vectors, ids)

    def recall(parameters: dict[str, int]) -> float:
        set_search_parameters(reopened, parameters)
        found = reopened.search(normalised(queries), 10)[1]
        return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))

    assert recall({"nprobe": nprobe}) >= 0.93  # the target, within the sampling error of 500 queries
    assert recall({"nprobe": nprobe // 2}) < 0.95  # half as many probes miss it: the cheapest was chosen


def test_the_training_sample_per_list_is_asked_for_and_recorded(collection) -> None:
    # 1.2 × points per list × 32 lists, drawn at random from the 9,000 (less the 500 held out)
    least = build_index("IVF32,Flat", DIM, 9000, shards(collection), train_points_per_list=39)
    default = build_index("IVF32,Flat", DIM, 9000, shards(collection))
    assert abs(least.train_points - 1.2 * 39 * 32) < 150 and abs(default.train_points - 1.2 * 50 * 32) < 150
    assert build_index("Flat", DIM, 9000, shards(collection)).train_points == 0  # nothing to train
    with pytest.raises(CompsearchError, match="below faiss's minimum of 39"):
        build_index("IVF32,Flat", DIM, 9000, shards(collection), train_points_per_list=20)


def test_an_opq_index_searches_with_its_nprobe_and_a_selector_through_the_rotation(collection, tmp_path: Path) -> None:
    ids, vectors = collection
    trained = new_index("OPQ8,IVF32,PQ8x4", DIM)
    faiss.downcast_VectorTransform(trained.chain.at(0)).niter = 2  # the rotation's quality is not the point
    trained.train(normalised(vectors[:2000]))
    parts = add_parts(trained, ((i, normalised(v)) for i, v in shards(collection)()), tmp_path, workers=1)
    merge_parts(trained, parts, tmp_path / "p.faiss", exact_lookup=False)
    index = read_faiss_index(tmp_path / "p.faiss", {"nprobe": 8})
    assert isinstance(faiss.downcast_index(index), faiss.IndexPreTransform)
    assert faiss.extract_index_ivf(index).nprobe == 8
    selected = ids[::2]
    queries = normalised(planted(20, seed=7))
    scores, found = index.search(queries, 10, params=search_parameters(index, faiss.IDSelectorBatch(selected)))
    # the same probes unfiltered, every vector of the 8 lists ranked, then the selected kept
    all_scores, everything = index.search(queries, len(ids))
    for row in range(len(queries)):
        kept = np.isin(everything[row], selected)
        np.testing.assert_array_equal(found[row], everything[row][kept][:10])
        np.testing.assert_allclose(scores[row], all_scores[row][kept][:10], rtol=1e-5)


def test_held_out_queries_do_not_count_themselves() -> None:
    vectors = normalised(planted(200, seed=5))
    ids = np.arange(200, dtype=np.int64)
    held_out = HeldOut(ids[:20], vectors[:20], k=5)
    held_out.see(ids[:100], vectors[:100])
    held_out.see(ids[100:], vectors[100:])
    scores = vectors[:20] @ vectors.T
    np.fill_diagonal(scores[:, :20], -np.inf)
    np.testing.assert_array_equal(held_out.labels, np.argsort(-scores, axis=1)[:, :5])
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    flat.add_with_ids(vectors, ids)
    assert held_out.recall(flat) == 1.0


def test_on_disk_index_opens_after_its_folder_moves(collection, tmp_path: Path, capfd) -> None:
    (tmp_path / "a").mkdir()
    built = build_index("IVF32,Flat", DIM, 9000, shards(collection), path=tmp_path / "a" / "p.faiss")
    queries = normalised(planted(20, seed=6))
    expected = built.index.search(queries, 10)
    del built.index
    shutil.move(tmp_path / "a", tmp_path / "b")
    capfd.readouterr()
    moved = read_faiss_index(tmp_path / "b" / "p.faiss", built.search_parameters)
    assert capfd.readouterr().out == ""  # faiss's messages would corrupt a --format json answer
    found = moved.search(queries, 10)
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_array_equal(found[0], expected[0])
    lists_path(tmp_path / "b" / "p.faiss").unlink()
    with pytest.raises(IndexDirectoryError, match="p.ivfdata is missing"):
        read_faiss(tmp_path / "b" / "p.faiss")


def test_auto_moves_from_flat_to_ivf_to_an_hnsw_quantizer_with_codes_that_fit() -> None:
    assert choose_factory(10_000, 768, 1 << 40) == "Flat"
    assert choose_factory(1_000_000, 768, 1 << 40) == "IVF4096,Flat"
    assert choose_factory(10_000_000, 768, 1 << 40) == "IVF16384_HNSW32,Flat"
    assert choose_factory(10_000_000, 768, 12 << 30) == "IVF16384_HNSW32,PQ384"  # 30 GB raw over a 12 GiB budget
    assert choose_factory(100_000_000, 768, 12 << 30) == "IVF32768_HNSW32,PQ96"  # (96 + 8) B × 1e8 ≤ 12 GiB
