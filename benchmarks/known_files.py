"""Memory and lookup speed of the indexer's record of indexed files (deduplication and appends).

    .venv/bin/python benchmarks/known_files.py [--files 1000000]

Builds the record of ``--files`` files (random sha256 digests, paths like a photo library's)
two ways, each measured by tracemalloc: the dict of sha256 → (id, path) the indexer kept
before, and :class:`indexer.known_files.KnownFiles` read from Parquet-like record batches;
then times lookups in batches of 256 (half known, half not). Prints the table and rewrites its
section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import os
import platform
import time
import tracemalloc

import click
import pyarrow as pa

from compsearch.indexer.known_files import KnownFiles, file_keys
from results_section import publish

BATCH = 256


def _files(count: int) -> tuple[list[str], list[str]]:
    shas = [os.urandom(32).hex() for _ in range(count)]
    paths = [f"/data/photos/{n // 1000:06d}/IMG_{n:09d}.jpg" for n in range(count)]
    return shas, paths


def _measured(build):
    tracemalloc.start()
    started = time.perf_counter()
    built = build()
    seconds = time.perf_counter() - started
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return built, size, seconds


@click.command()
@click.option("--files", type=int, default=1_000_000, show_default=True)
def main(files: int) -> None:
    shas, paths = _files(files)
    table = pa.table({"id": list(range(files)), "sha256": shas, "path": paths})  # as the shards hold them
    columns = [table.column(name) for name in ("id", "sha256", "path")]
    as_dict, dict_bytes, dict_seconds = _measured(  # the indexer's code before, strings and all
        lambda: {sha: (i, path) for i, sha, path in zip(*(column.to_pylist() for column in columns))})
    del as_dict
    known, known_bytes, known_seconds = _measured(lambda: KnownFiles.from_batches(table.to_batches(65536)))
    queries = [sha if n % 2 else os.urandom(32).hex() for n, sha in enumerate(shas[:100_000])]
    started = time.perf_counter()  # per batch as the indexer does: keys (with paths), then the lookup
    hits = sum(hit is not None for s in range(0, len(queries), BATCH)
               for hit in known.find(file_keys(queries[s:s + BATCH], paths[s:s + BATCH]).digests))
    lookup_us = (time.perf_counter() - started) / len(queries) * 1e6
    assert hits == len(queries) // 2
    lines = [
        "## Record of indexed files: memory and lookups (CPU)",
        "",
        f"`.venv/bin/python benchmarks/known_files.py --files {files}` ({platform.processor() or platform.machine()}, "
        "memory kept after the build, measured by tracemalloc; random digests, library-like paths)",
        "",
        "| record | bytes per file | at 1e8 files | build s |",
        "|---|---:|---:|---:|",
        f"| dict sha256 → (id, path) (before) | {dict_bytes / files:.0f} | {dict_bytes / files * 1e8 / 2**30:.1f} GiB "
        f"| {dict_seconds:.1f} |",
        f"| `KnownFiles` (sorted runs of 4 × 64 bits) | {known_bytes / files:.0f} | "
        f"{known_bytes / files * 1e8 / 2**30:.1f} GiB | {known_seconds:.1f} |",
        "",
        f"Lookups in batches of {BATCH} (half known): {lookup_us:.1f} µs per file over {len(known._runs)} sorted run(s).",
    ]
    publish("known-files", lines)


if __name__ == "__main__":
    main()
