"""Which FAISS index to build, and building it from vectors streamed shard by shard.

The user's vocabulary is faiss's own ``index_factory`` strings (``Flat``, ``HNSW32``,
``IVF4096,Flat``, ``IVF4096,PQ64``); ``auto`` picks one from the collection's size and a
memory budget, after autofaiss's heuristics: exact search while it is cheap, then an
inverted file with about 4·√n lists, compressed by product quantisation once the raw
vectors would not fit the budget. Every index uses inner product on L2-normalised vectors
and carries the store's int64 ids (``IDMap2`` around indexes without ids of their own).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from compsearch.mapping.errors import CompsearchError

AUTO = "auto"
EXACT_LIMIT = 20_000  # below this, Flat answers a query in a few ms: no approximation needed
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per inverted list

VectorStream = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # () -> (ids, vectors) per shard


@dataclass
class BuiltIndex:
    factory: str
    index: object  # faiss.Index
    count: int
    train_seconds: float
    add_seconds: float
    search_parameters: dict[str, int]


def default_memory_budget() -> int:
    """Half the machine's memory, in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def inverted_lists(count: int) -> int:
    """A power of two near 4·√count, with enough training points per list."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    return int(max(1, min(target, 65536, count // MIN_POINTS_PER_LIST)))


def choose_factory(count: int, dim: int, memory_budget: int | None = None) -> str:
    """The ``index_factory`` string ``auto`` means for ``count`` vectors of ``dim``."""
    budget = memory_budget or default_memory_budget()
    if count <= EXACT_LIMIT:
        return "Flat"
    lists = inverted_lists(count)
    if count * dim * 4 <= budget:
        return f"IVF{lists},Flat"
    sub_quantizers = [m for m in range(dim // 2, 0, -1) if dim % m == 0 and count * (m + 8) <= budget]
    if not sub_quantizers:
        raise CompsearchError(
            f"{count} vectors of {dim} dimensions do not fit a {budget >> 20} MiB memory budget even compressed",
            "raise --memory, or shard the collection over several index directories",
        )
    return f"IVF{lists},PQ{sub_quantizers[0]}"


def default_nprobe(lists: int) -> int:
    """Lists visited per query: twice the fewest that reached recall@10 ≥ 0.95 on synthetic
    vectors shaped like real ones (benchmarks/search_latency.py, `clustered`: 8 of 1024 lists
    at 100k, 16 of 4096 at 1M — growing as √lists), so 0.5·√lists, at least 8."""
    return int(min(lists, max(8, round(0.5 * math.sqrt(lists)))))


def _new_index(factory: str, dim: int):
    import faiss

    wrapped = factory if factory.startswith("IVF") or factory.startswith("IDMap") else f"IDMap2,{factory}"
    try:
        return faiss.index_factory(dim, wrapped, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise CompsearchError(
            f"faiss cannot build the index {factory!r} ({str(error).splitlines()[-1].strip()})",
            "use an index_factory string such as Flat, HNSW32, IVF1024,Flat or IVF4096,PQ64, or auto",
        ) from error


def normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _training_sample(stream: VectorStream, count: int, size: int, seed: int) -> np.ndarray:
    """About ``size`` vectors drawn uniformly from the stream, one shard in memory at a time."""
    rng = np.random.default_rng(seed)
    keep = min(1.0, size / max(count, 1))
    picked = [vectors[rng.random(len(vectors)) < keep] for _, vectors in stream()]
    return normalised(np.concatenate(picked)) if picked else np.zeros((0, 0), np.float32)


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


def build_index(factory: str, dim: int, count: int, stream: VectorStream, memory_budget: int | None = None,
                seed: int = 0) -> BuiltIndex:
    """Build ``factory`` (or ``auto``) over the vectors of ``stream``, normalised, with their ids."""
    import faiss

    chosen = choose_factory(count, dim, memory_budget) if factory == AUTO else factory
    index = _new_index(chosen, dim)
    started = time.perf_counter()
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        sample = _training_sample(stream, count, int(1.2 * max(256 * MIN_POINTS_PER_LIST, 64 * ivf.nlist)), seed)
        if len(sample) < ivf.nlist:
            raise CompsearchError(
                f"{chosen} needs at least {ivf.nlist} vectors to train, the index holds {len(sample)}",
                "use --index Flat (or auto) for a collection this small",
            )
        index = _train(index, sample)
    trained = time.perf_counter()
    for ids, vectors in stream():
        index.add_with_ids(normalised(vectors), ids.astype(np.int64))
    parameters: dict[str, int] = {}
    if chosen.startswith("IVF"):
        ivf = faiss.extract_index_ivf(index)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id) by the store's ids
        parameters["nprobe"] = default_nprobe(ivf.nlist)
        ivf.nprobe = parameters["nprobe"]
    return BuiltIndex(chosen, index, int(index.ntotal), trained - started, time.perf_counter() - trained, parameters)
