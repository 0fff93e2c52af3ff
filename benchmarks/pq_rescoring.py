"""Recall of a compressed (PQ) index with and without exact rescoring, through the search layer.

An index directory of ``--size`` vectors from ``search_latency.py``'s spectrum-matched
generator (``clustered``: fitted to the photos' neighbour cosines) is built by the indexer's
finish stage as ``--factory`` (which keeps the exact vectors beside the codes); 200 fresh
queries (never indexed) are searched through ``SearchIndex``'s single-term path with the codes
alone, with the rescoring depth the build chose, then with k × R candidates rescored exactly for
each R in ``--depths``; recall@10 against exact answers (streamed over the shards) and the
single-query latency (p50, one query at a time).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/pq_rescoring.py --spectrum-from RAW.json \\
        [--size 200000] [--factory IVF1024_HNSW32,PQ96] [--depths 5,20,50]

``RAW.json``: a raw file of ``faiss_scale.py`` or ``search_latency.py`` (its fitted spectrum and
clusters); without it the spectrum is fitted again from the sample photos (minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from faiss_update import exact_top10  # noqa: E402
from results_section import publish  # noqa: E402
from search_latency import Synthetic, calibrate, real_vectors, spectrum_model  # noqa: E402

from compsearch.indexer.faiss_tuning import RESCORING, RESCORING_KEY  # noqa: E402
from compsearch.indexer.finish import finish  # noqa: E402
from compsearch.indexer.manifest import Manifest, Provenance  # noqa: E402
from compsearch.indexer.settings import IndexSettings  # noqa: E402
from compsearch.indexer.store import ChunkRows, IndexStore  # noqa: E402
from compsearch.mapping.identity import EncoderIdentity  # noqa: E402
from compsearch.search.index import SearchIndex  # noqa: E402

QUERIES = 200
CHUNK = 50_000


def build(folder: Path, data: Synthetic, size: int, factory: str) -> tuple[IndexStore, float]:
    store = IndexStore(folder)
    for number, start in enumerate(range(0, size, CHUNK)):
        ids = range(start, min(size, start + CHUNK))
        rows = [{"id": i, "key": f"{i:08d}", "path": None, "sha256": f"{i:064x}", "width": 1, "height": 1} for i in ids]
        store.write_chunk(ChunkRows(0, number, rows, {"full": data.chunk(number, len(rows))}, [], []))
    identity = EncoderIdentity("synthetic", "random-init", "blocks.0", "model", None, None, None, "fp32")
    manifest = Manifest.new(identity, Provenance(), "benchmark", "now")
    started = time.perf_counter()
    finish(store, manifest, SimpleNamespace(names=["full"], space="model"),
           IndexSettings(index=factory, progress=False))
    return store, time.perf_counter() - started


def measured(index: SearchIndex, queries: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """recall@10 and the p50 single-query milliseconds of the single-term search path."""
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(index._faiss_search("full", query[None], 10)[1][0])
        times.append(time.perf_counter() - started)
    hits = [len(set(row) & set(truth)) / 10 for row, truth in zip(found, exact)]
    return float(np.mean(hits)), statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--factory", default="IVF1024_HNSW32,PQ96")
    parser.add_argument("--depths", default="5,20,50", help="rescoring depths R: k × R candidates")
    parser.add_argument("--spectrum-from", type=Path, help="a faiss_scale.py / search_latency.py raw file")
    options = parser.parse_args()
    load = os.getloadavg()[0]
    if options.spectrum_from:
        earlier = json.loads(options.spectrum_from.read_text())
        spectrum, shape = earlier["spectrum"], earlier["clustered"]
    else:
        spectrum = spectrum_model(real_vectors())
        shape = calibrate(spectrum)
    data = Synthetic(spectrum, options.size, shape["clusters"], shape["between"])
    queries = Synthetic(spectrum, 10**9 + options.size, shape["clusters"], shape["between"]).sample(QUERIES)
    with tempfile.TemporaryDirectory() as folder:
        store, seconds = build(Path(folder), data, options.size, options.factory)
        exact = exact_top10(store, queries)
        index = SearchIndex(folder)
        entry = index.manifest.indexes["full"]
        chosen = entry.search_parameters.get(RESCORING_KEY, RESCORING)
        recall, p50 = measured(index, queries, exact)
        rows = [f"| rescored as the build chose, k × {chosen} candidates | {recall:.3f} | {p50:.2f} |"]
        for depth in [int(depth) for depth in options.depths.split(",")]:
            index.rescoring = depth
            recall, p50 = measured(index, queries, exact)
            rows.append(f"| rescored, k × {depth} candidates | {recall:.3f} | {p50:.2f} |")
        index._exact_vectors.clear()  # the codes alone: as before the exact vectors were kept
        recall, p50 = measured(index, queries, exact)
        rows.insert(0, f"| PQ codes alone | {recall:.3f} | {p50:.2f} |")
        sizes = {path.name: path.stat().st_size for path in Path(folder).glob("full*")}
    lines = ["## Exact rescoring of a compressed index", "",
             f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python benchmarks/pq_rescoring.py "
             f"--size {options.size} --factory {options.factory} --depths {options.depths}"
             f"{' --spectrum-from RAW' if options.spectrum_from else ''}`; {os.cpu_count()} cores, load average "
             f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.", "",
             f"{options.size:,} `clustered` 768-d vectors ({shape['clusters']} clusters, between-share "
             f"{shape['between']}), `{entry.factory}` built by the finish stage in {seconds:.0f} s with "
             f"{entry.search_parameters}; files: " + ", ".join(f"`{name}` {size / 2**20:.0f} MiB"
                                                               for name, size in sorted(sizes.items())) + ". "
             f"{QUERIES} fresh queries, top 10, through `SearchIndex`'s single-term path, one query at a time.", "",
             "| search | recall@10 | p50 ms |", "|---|---:|---:|", *rows]
    publish("pq-rescoring", lines)


if __name__ == "__main__":
    main()
