"""The sync plan at scale: memory and time of planning a rerun over a large, unchanged folder.

A nightly rerun of a big index lists the folder and compares it with the index's rows by path;
with nothing or little to encode, what it holds is the rows and what it has seen. This measures
that, and for scale the first run's plan (every file to encode): N small files (each its own
bytes; the plan only stats and, at a mismatch, hashes them) in nested folders, an index's
``shards`` written for them directly in parts of one chunk (no model runs: the rows are what
indexing would write), then ``plan_sync`` over the folder in a fresh process each time: before
the shards exist, unchanged, and after 1 % of the files changed (a quarter each added, removed,
moved, edited). Peak memory is the process's maximum resident set after the plan minus before
it (Python, numpy, pyarrow and torch already imported).

    .venv/bin/python benchmarks/sync_plan.py --files 1000000
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from compsearch.indexer.store import PARQUET, SHARDS, write_table
from compsearch.mapping.chunk_store import part_name
from compsearch.mapping.images.file_facts import modified
from compsearch.mapping.images.loader import DEFAULT_CHUNK_SIZE

sys.path.insert(0, str(Path(__file__).parent))
from results_section import command_line, publish  # noqa: E402

PER_FOLDER = 1000
ROWS_PER_SHARD = DEFAULT_CHUNK_SIZE  # one part per chunk, as indexing writes them


def file_path(root: Path, number: int) -> Path:
    return root / f"{number // PER_FOLDER:05d}" / f"{number:09d}.jpg"


def make_collection(root: Path, count: int) -> None:
    """``count`` files of 16 bytes (their number and a random tail: each its own bytes)."""
    for number in range(count):
        path = file_path(root, number)
        if number % PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(number.to_bytes(8, "little") + os.urandom(8))


def write_shards(root: Path, index: Path, count: int) -> None:
    """The rows indexing would have written for the collection (identity and file columns)."""
    shards = index / SHARDS
    shards.mkdir(parents=True)
    for chunk, start in enumerate(range(0, count, ROWS_PER_SHARD)):
        rows: dict[str, list] = {name: [] for name in ("id", "key", "path", "sha256", "folder", "file_size", "mtime")}
        for number in range(start, min(start + ROWS_PER_SHARD, count)):
            path = file_path(root, number)
            key = str(path.relative_to(root))
            stat = path.stat()
            for name, value in zip(rows, (number, key, str(path), hashlib.sha256(path.read_bytes()).hexdigest(),
                                          os.path.dirname(key), stat.st_size, modified(stat))):
                rows[name].append(value)
        table = pa.table({**rows, "id": pa.array(rows["id"], pa.int64()),
                          "mtime": pa.array(rows["mtime"], pa.timestamp("ms"))})
        write_table(table, shards / part_name(0, chunk, PARQUET))


def change_one_percent(root: Path, count: int) -> None:
    """A quarter each of 1 % of the files: added, removed, moved to another folder, edited."""
    draw = random.Random(0)
    quarter = max(1, count // 400)
    picked = draw.sample(range(count), 3 * quarter)
    removed, moved, edited = picked[:quarter], picked[quarter:2 * quarter], picked[2 * quarter:]
    for number in removed:
        file_path(root, number).unlink()
    for number in moved:
        target = root / "moved" / f"{number:09d}.jpg"
        target.parent.mkdir(exist_ok=True)
        file_path(root, number).rename(target)
    for number in edited:
        file_path(root, number).write_bytes(os.urandom(24))
    for number in range(count, count + quarter):
        path = root / "added" / f"{number:09d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(16))


def measure_once(root: Path, index: Path) -> dict:
    """In this process: one plan, its seconds and peak memory growth."""
    from compsearch.indexer.store import IndexStore
    from compsearch.indexer.sync import plan_sync
    from compsearch.mapping.images import open_source

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    plan = plan_sync(open_source(root), IndexStore(index) if index.exists() else None)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    return {"seconds": seconds, "peak_mib": peak / 1024, **plan.report()["counts"]}


def measured(root: Path, index: Path) -> dict:
    """:func:`measure_once` in a fresh process (its peak is the plan's alone)."""
    out = subprocess.run([sys.executable, __file__, "--measure", str(root), str(index)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--measure", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_once(*args.measure)))
        return
    work = Path(tempfile.mkdtemp(prefix="sync-plan-"))
    try:
        root, index = work / "photos", work / "index"
        started = time.perf_counter()
        make_collection(root, args.files)
        made = time.perf_counter() - started
        first = measured(root, index)
        write_shards(root, index, args.files)
        unchanged = measured(root, index)
        change_one_percent(root, args.files)
        changed = measured(root, index)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["## The sync plan at scale: memory and time (CPU)", "",
             f"`{command_line('benchmarks/sync_plan.py')}` (load average {os.getloadavg()[0]:.1f}; "
             f"collection made in {made:.0f} s)", "",
             f"{args.files} files of 16 bytes in folders of {PER_FOLDER}, an index's shards written for them directly; "
             "each plan in a fresh process, peak resident memory growth during the plan.", "",
             "| folder | plan seconds | µs per file | peak MiB | bytes per file | counts |", "|---|---|---|---|---|---|"]
    for name, result in (("not indexed yet (every file to encode)", first), ("unchanged", unchanged),
                         ("1 % changed", changed)):
        counts = ", ".join(f"{kind} {result[kind]}" for kind in ("new", "changed", "moved", "removed", "unchanged"))
        lines.append(f"| {name} | {result['seconds']:.1f} | {result['seconds'] / args.files * 1e6:.1f} | "
                     f"{result['peak_mib']:.0f} | {result['peak_mib'] * 2**20 / args.files:.0f} | {counts} |")
    if args.no_write:
        print("\n".join(lines))
    else:
        publish("sync-plan", lines)


if __name__ == "__main__":
    main()
