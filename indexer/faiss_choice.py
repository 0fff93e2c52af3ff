"""Which FAISS index to build, and building it from vectors streamed shard by shard.

The user's vocabulary is faiss's own ``index_factory`` strings (``Flat``, ``HNSW32``,
``IVF4096,Flat``, ``IVF65536_HNSW32,PQ64``, ``OPQ64,IVF65536_HNSW32,PQ64``); ``auto`` picks one
from the collection's size and a memory budget, after autofaiss's heuristics: exact search
while it is cheap, then an inverted file with about 4·√n lists (their centroids searched by an
HNSW graph once a flat scan of them would cost more than the lists probed), compressed by
product quantisation, with the largest codes that fit, once the raw vectors would not fit the
budget. Every index uses inner product on L2-normalised vectors and carries the store's int64
ids (``IDMap2`` around indexes without ids of their own).

Building never holds the collection: one pass draws the training sample and the held-out
queries, one pass adds the vectors — into inverted lists per shard, merged on disk, when the
index is written to a path (:mod:`indexer.faiss_ondisk`) — while the held-out queries' exact
answers are kept; then ``nprobe``/``efSearch`` are chosen for a target recall on them
(:mod:`indexer.faiss_tuning`).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compsearch.indexer.faiss_ondisk import LISTS_SUFFIX, add_parts, lists_path, merge_parts
from compsearch.indexer.faiss_tuning import HeldOut, tune
from compsearch.mapping.chunk_store import write_atomically
from compsearch.mapping.errors import CompsearchError

AUTO = "auto"
EXACT_LIMIT = 20_000  # below this, Flat answers a query in a few ms: no approximation needed
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per inverted list
TRAIN_POINTS_PER_LIST = 50  # drawn per list: above faiss's floor, a fifth of its 256 ceiling (k-means cost)
PQ_TRAIN_POINTS = 256 * MIN_POINTS_PER_LIST  # each PQ sub-quantizer has 256 centroids
FLAT_QUANTIZER_LISTS = 4096  # beyond, an HNSW graph finds the nearest lists (a flat scan of 65536 × 768 is ~50 MFLOP)
MAX_LISTS = 1 << 18  # 1e9 vectors: 4·√n ≈ 126k lists
TARGET_RECALL = 0.95
TUNING_QUERIES = 500  # held-out queries: recall@10 measured to about ±0.01

VectorStream = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # () -> (ids, vectors) per shard


@dataclass
class BuiltIndex:
    factory: str
    index: object  # faiss.Index; when built to a path, as opened from it (lists memory-mapped)
    count: int
    train_seconds: float
    add_seconds: float
    search_parameters: dict[str, int]  # faiss ParameterSpace names: nprobe, quantizer_efSearch, efSearch
    recall: float | None = None  # recall@10 of those parameters on the held-out queries (None: exact)
    target_recall: float | None = None
    tuning_queries: int = 0
    tune_seconds: float = 0.0
    files: list[Path] = field(default_factory=list)  # written to disk (the .faiss, and .ivfdata when on disk)
    train_points: int = 0  # vectors the index was trained on

    def manifest_entry(self) -> dict:
        """What the manifest records about how the index searches."""
        return {"search_parameters": self.search_parameters, "recall_at_10": self.recall,
                "target_recall": self.target_recall, "tuning_queries": self.tuning_queries,
                "on_disk": any(path.suffix == LISTS_SUFFIX for path in self.files)}


def default_memory_budget() -> int:
    """Half the machine's memory, in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def inverted_lists(count: int) -> int:
    """A power of two near 4·√count, with enough training points per list."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    return int(max(1, min(target, MAX_LISTS, count // MIN_POINTS_PER_LIST)))


def choose_factory(count: int, dim: int, memory_budget: int | None = None) -> str:
    """The ``index_factory`` string ``auto`` means for ``count`` vectors of ``dim``."""
    budget = memory_budget or default_memory_budget()
    if count <= EXACT_LIMIT:
        return "Flat"
    lists = inverted_lists(count)
    quantizer = f"IVF{lists}" if lists <= FLAT_QUANTIZER_LISTS else f"IVF{lists}_HNSW32"
    if count * dim * 4 <= budget:
        return f"{quantizer},Flat"
    sub_quantizers = [m for m in range(dim // 2, 0, -1) if dim % m == 0 and count * (m + 8) <= budget]
    if not sub_quantizers:
        raise CompsearchError(
            f"{count} vectors of {dim} dimensions do not fit a {budget >> 20} MiB memory budget even compressed",
            "raise --memory, or shard the collection over several index directories",
        )
    return f"{quantizer},PQ{sub_quantizers[0]}"


def new_index(factory: str, dim: int):
    """An empty ``factory`` index for inner product, with ids (see the module docstring)."""
    import faiss

    wrapped = factory if "IVF" in factory or factory.startswith("IDMap") else f"IDMap2,{factory}"  # IVF keeps ids
    try:
        index = faiss.index_factory(dim, wrapped, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise CompsearchError(
            f"faiss cannot build the index {factory!r} ({str(error).splitlines()[-1].strip()})",
            "use an index_factory string such as Flat, HNSW32, IVF1024,Flat or IVF4096,PQ64, or auto",
        ) from error
    if "IVF" in factory and isinstance(ivf := faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False  # minutes of annealing for a Hamming filter searches never use
    return index


def keeps_exact_vectors(index) -> bool:
    """Whether ``index.reconstruct(id)`` gives back the indexed vector itself (flat storage,
    ids mapped), rather than a compressed approximation (PQ, SQ) or nothing."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexIVFFlat):
        return index.direct_map.type != faiss.DirectMap.NoMap
    return isinstance(index, faiss.IndexFlat)


def normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _train(index, sample: np.ndarray):
    """``index`` trained on ``sample``; on the GPU when faiss sees one (faiss-gpu raises
    rather than falls back, so it is only asked when a GPU is there)."""
    import faiss

    if faiss.get_num_gpus() > 0:
        on_gpu = faiss.index_cpu_to_all_gpus(index)
        on_gpu.train(sample)
        return faiss.index_gpu_to_cpu(on_gpu)
    index.train(sample)
    return index


def default_workers() -> int:
    """Parts added at once: faiss already spreads one add over the cores, so more only pays
    on machines with cores to spare."""
    return max(1, (os.cpu_count() or 1) // 4)


def _samples(stream: VectorStream, count: int, train: int, queries: int, seed: int):
    """One pass over the stream: about ``train`` vectors to train on and ``queries`` others held
    out (ids and vectors, normalised), drawn uniformly, one shard in memory at a time."""
    rng = np.random.default_rng(seed)
    query_share, train_share = min(1.0, 1.2 * queries / max(count, 1)), min(1.0, train / max(count, 1))
    trained, held_ids, held = [], [], []
    for ids, vectors in stream():
        draw = rng.random(len(vectors))
        asked = draw < query_share
        trained.append(vectors[~asked & (rng.random(len(vectors)) < train_share)])
        held_ids.append(np.asarray(ids, dtype=np.int64)[asked])
        held.append(vectors[asked])
    sample = normalised(np.concatenate(trained)) if trained else np.zeros((0, 0), np.float32)
    held_out = HeldOut(np.concatenate(held_ids)[:queries], normalised(np.concatenate(held)[:queries])) if held else None
    return sample, held_out


def normalised_chunks(chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                      held_out=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, vectors)`` chunks with int64 ids and normalised vectors, each also folded into
    the ``held_out`` queries' exact answers when given."""
    for ids, vectors in chunks:
        ids, vectors = np.asarray(ids, dtype=np.int64), normalised(vectors)
        if held_out is not None:
            held_out.see(ids, vectors)
        yield ids, vectors


def write_one_file(index, path: Path) -> None:
    """``index`` written atomically to ``path``, alone (an earlier on-disk index's lists removed)."""
    import faiss

    write_atomically(path, lambda temporary: faiss.write_index(index, str(temporary)))
    if lists_path(path).exists():
        lists_path(path).unlink()  # an earlier on-disk index's lists


def build_index(factory: str, dim: int, count: int, stream: VectorStream, memory_budget: int | None = None,
                seed: int = 0, *, path: Path | None = None, target_recall: float = TARGET_RECALL,
                tuning_queries: int = TUNING_QUERIES, workers: int | None = None,
                train_points_per_list: int = TRAIN_POINTS_PER_LIST) -> BuiltIndex:
    """Build ``factory`` (or ``auto``) over the vectors of ``stream``, normalised, with their ids,
    its search parameters chosen for ``target_recall`` (recall@10 on held-out vectors).

    With ``path``, the index is written there: an inverted file part by part (``workers`` at
    once) merged on disk, its lists in ``path.with_suffix(".ivfdata")``; any other index as one
    file. The returned index is then the one opened from ``path``. Without, it stays in memory.
    ``train_points_per_list``: the coarse quantizer's training sample per list (k-means costs
    in proportion; faiss's floor, 39, is the least accepted)."""
    import faiss

    if train_points_per_list < MIN_POINTS_PER_LIST:
        raise CompsearchError(f"{train_points_per_list} training points per inverted list is below faiss's "
                              f"minimum of {MIN_POINTS_PER_LIST}", f"ask for {MIN_POINTS_PER_LIST} or more")

    chosen = choose_factory(count, dim, memory_budget) if factory == AUTO else factory
    index = new_index(chosen, dim)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    approximate = chosen != "Flat"
    started = time.perf_counter()
    held_out, sample = None, np.zeros((0, dim), np.float32)
    if approximate or not index.is_trained:
        lists = ivf.nlist if ivf is not None else 0
        wanted = int(1.2 * max(train_points_per_list * lists, PQ_TRAIN_POINTS if "PQ" in chosen else 0))
        sample, held_out = _samples(stream, count, wanted if not index.is_trained else 0,
                                    min(tuning_queries, count // 5) if approximate else 0, seed)  # 4/5 left to train
        if not index.is_trained:
            if len(sample) < max(lists, 1):
                raise CompsearchError(
                    f"{chosen} needs at least {lists} vectors to train, the index holds {len(sample)}",
                    "use --index Flat (or auto) for a collection this small",
                )
            index = _train(index, sample)
    train_points = len(sample)
    del sample  # not held while adding (at 1e7 vectors and 16k lists: 2.4 GB)
    trained = time.perf_counter()
    chunks = normalised_chunks(stream(), held_out)
    files: list[Path] = []
    if path is not None and ivf is not None:
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.parts-", dir=path.parent) as parts:
            built = add_parts(index, chunks, Path(parts), workers or default_workers())
            index = merge_parts(index, built, path, exact_lookup=chosen.endswith(",Flat"))
        files = [path, lists_path(path)]
    else:
        for ids, vectors in chunks:
            index.add_with_ids(vectors, ids)
        if ivf is not None and chosen.endswith(",Flat"):
            faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id)
        if path is not None:
            write_one_file(index, path)
            files = [path]
    added = time.perf_counter()
    # a compressed index is searched through the exact vectors kept beside it: tuned for its rescored recall
    rescored = not keeps_exact_vectors(index)
    parameters, recall = tune(index, held_out, target_recall, rescored) if held_out is not None else ({}, None)
    return BuiltIndex(chosen, index, int(index.ntotal), trained - started, added - trained, parameters, recall,
                      target_recall if approximate else None, len(held_out.ids) if held_out is not None else 0,
                      time.perf_counter() - added, files, train_points)
