"""A FAISS index updated after 1 % of the collection changed, against rebuilding it.

Side by side in one process, per index type: ``--size`` synthetic vectors (Gaussian, ``--dim``)
written as real shards and indexed by the indexer's finish stage (timed: the build); then half
a percent of the rows leave their shards and as many new rows arrive in a new run's shard, and
the finish stage runs again — which now updates the index (:mod:`indexer.faiss_update`) — then
once more with the index forgotten, which rebuilds it from the same shards (retrain, re-add,
retune). Only the FAISS stage is timed: the sync's shard rewrites are the same either way.
Recall@10 of both against the exact answers of 200 fresh queries, through the search layer
(the parameters each recorded; a compressed index rescored with its exact vectors).

    .venv/bin/python benchmarks/faiss_update.py [--size 500000] [--dim 512] [--types Flat,IVF1024,Flat]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from cli_query import ENCODER, synthetic_index, synthetic_rows  # noqa: E402
from results_section import publish  # noqa: E402

from compsearch.indexer.faiss_choice import normalised  # noqa: E402
from compsearch.indexer.faiss_ondisk import read_faiss  # noqa: E402
from compsearch.indexer.faiss_update import held_ids  # noqa: E402
from compsearch.indexer.finish import finish  # noqa: E402
from compsearch.indexer.store import SHARDS, ChunkRows  # noqa: E402
from compsearch.search.index import SearchIndex  # noqa: E402

QUERIES = 200


def exact_top10(store, queries: np.ndarray) -> np.ndarray:
    """The ids of each query's 10 nearest (inner product) over the shards, streamed."""
    best_scores = np.full((len(queries), 10), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 10), np.int64)
    for ids, vectors in store.iter_vectors("full"):
        scores = queries @ normalised(vectors).T
        ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], 1)
        scores = np.concatenate([best_scores, scores], 1)
        order = np.argsort(-scores, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return best_ids


def recall(store, queries: np.ndarray, exact: np.ndarray) -> float:
    """recall@10 through the search layer's single-term path (its parameters; a compressed
    index rescored with its exact vectors)."""
    found = SearchIndex(store.folder)._faiss_search("full", queries, 10)[1]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)]))


def case(factory: str, size: int, dim: int) -> str:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        store, manifest, settings = synthetic_index(Path(folder), size, dim, index=factory)
        built = time.perf_counter() - started
        changed = size // 200  # half a percent out, as many in: 1 % of the index changed
        leaving = np.random.default_rng(1).choice(size, changed, replace=False)
        for shard in store.shard_paths():
            rows = pq.read_table(shard)
            store.rewrite_shard(shard, rows.filter(~np.isin(rows.column("id").to_numpy(), leaving)))
        rows, vectors = synthetic_rows(size, changed, dim, seed=10_000)
        store.write_chunk(ChunkRows(1, 0, rows, {"full": vectors}, [], []))
        started = time.perf_counter()
        finish(store, manifest, ENCODER, settings)
        updated_seconds = time.perf_counter() - started
        updated = manifest.indexes["full"]
        shard_ids = np.sort(store.read_table(SHARDS, columns=["id"]).column("id").to_numpy())
        sound = np.array_equal(np.sort(held_ids(read_faiss(store.faiss_path("full")))), shard_ids)
        queries = normalised(np.random.default_rng(2).standard_normal((QUERIES, dim), dtype=np.float32))
        exact = exact_top10(store, queries)
        updated_recall = recall(store, queries, exact)
        del manifest.indexes["full"]
        started = time.perf_counter()
        finish(store, manifest, ENCODER, settings)
        rebuilt_seconds = time.perf_counter() - started
        rebuilt = manifest.indexes["full"]
        rebuilt_recall = recall(store, queries, exact)
    was_updated = updated.changed_since_build == 2 * changed
    return (f"| {factory} | {size:,} × {dim} | {built:.1f} | {updated_seconds:.2f} "
            f"({'updated' if was_updated else 'rebuilt'}) | {rebuilt_seconds:.1f} | "
            f"{rebuilt_seconds / updated_seconds:.0f}× | {updated_recall:.3f} ({updated.search_parameters or '–'}) | "
            f"{rebuilt_recall:.3f} ({rebuilt.search_parameters or '–'}) | {'yes' if sound else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--types", default="Flat;IVF1024,Flat", help="index_factory strings, separated by ';'")
    options = parser.parse_args()
    lines = ["## FAISS indexes updated after a sync, against rebuilt", "",
             f"`.venv/bin/python benchmarks/faiss_update.py --size {options.size} --dim {options.dim} "
             f"--types '{options.types}'`; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start. "
             "1 % of the rows changed (half a percent removed, as many added); only the finish stage timed.", "",
             "| index | vectors | build (s) | update 1 % (s) | rebuild (s) | rebuild ÷ update | recall@10 updated "
             "(parameters) | recall@10 rebuilt (parameters) | index holds exactly the shards' ids |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += [case(factory, options.size, options.dim) for factory in options.types.split(";")]
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.2f}."]
    publish("faiss-update", lines)


if __name__ == "__main__":
    main()
