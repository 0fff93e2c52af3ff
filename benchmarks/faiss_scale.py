"""FAISS at scale: build time, peak memory, index size, latency and recall per index type,
built in memory and part by part merged on disk (CPU).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/faiss_scale.py [--sizes 1000000,10000000] [--families clustered,gaussian]
        [--types flat,ivf-memory,ivf-disk,hnsw-pq-disk,auto] [--append --raw RAW]

Vectors: the spectrum-matched generator of ``search_latency.py`` (768-d; the spectrum of real
DeiT-tiny z on the sample photos; ``clustered`` fitted to the photos' nearest-neighbour cosines,
``gaussian`` with no structure beyond the covariance), generated and streamed in chunks of
50,000 — never held whole (10M × 768 float32 is 30 GB).

Per family and size, each index type (``--types``) is built by the indexer's own
:func:`indexer.faiss_choice.build_index` in a child process (its peak RSS above its start is the
build's peak memory): ``flat`` (exact), ``ivf-memory`` (IVF with about 4·√n lists, flat codes,
filled in one process in memory, then written as one file), ``ivf-disk`` (the same, built part
by part from the shards and merged on disk), ``hnsw-pq-disk`` (an HNSW coarse quantizer over the
lists and PQ codes of ``--pq`` bytes, merged on disk), ``auto`` (what ``--index auto`` builds for
that size and ``--memory``, written to a path: on disk when it is an inverted file). A type
held in memory whose vectors exceed ``--memory`` is not built (a row says so). The coarse
quantizer trains on ``--train-per-list`` sampled vectors per list (faiss's floor is 39).
Each build chooses its ``nprobe`` for
recall@10 ≥ ``--target`` on held-out vectors of the collection and records the recall reached.
Each index is then opened as the search layer opens it (:func:`search.index.read_faiss_index`:
memory-mapped, the on-disk lists from the file beside the index) and measured: single-query
latency p50/p95 (batch 1, top 10, after a warm-up) and recall@10 of fresh queries (never
indexed) against their exact answers, computed by streaming the collection once more. The
1-minute load average is recorded beside each figure: the machine may be shared.

Raw measurements go to ``--raw`` (rewritten after each case); ``--append`` adds to the cases of
an earlier run's file (its spectrum reused, cases it holds not measured again: runs of
different sizes and types make one table, and an interrupted run resumes); ``--report RAW``
rewrites the section from one. Prints the table and rewrites its section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from results_section import command_line, raw_options, report_raw
from search_latency import DIM, TOP, Synthetic, calibrate, real_vectors, rss_bytes, single_query_latency, spectrum_model

TYPES = ("flat", "ivf-memory", "ivf-disk", "hnsw-pq-disk", "auto")
DEFAULT_TYPES = TYPES[:4]  # auto is one of them up to a few million vectors
IN_MEMORY = ("flat", "ivf-memory")  # built and written whole by one process
SECTION = "faiss-scale"


def factory_of(kind: str, count: int, pq: int, memory: int, lists: int | None = None) -> str:
    from compsearch.indexer.faiss_choice import choose_factory, inverted_lists

    lists = lists or inverted_lists(count)
    return {"flat": "Flat", "ivf-memory": f"IVF{lists},Flat", "ivf-disk": f"IVF{lists},Flat",
            "hnsw-pq-disk": f"IVF{lists}_HNSW32,PQ{pq}", "auto": choose_factory(count, DIM, memory)}[kind]


def _build(kind: str, factory: str, count: int, data: Synthetic, path: Path, target: float, report,
           train_per_list: int) -> None:
    """In a child process: build, write, and report times, parameters and peak memory."""
    import faiss

    from compsearch.indexer.faiss_choice import build_index

    start_rss = rss_bytes()
    started = time.perf_counter()
    built = build_index(factory, DIM, count, data.stream(count), target_recall=target,
                        path=None if kind == "ivf-memory" else path,
                        train_points_per_list=train_per_list)
    if kind == "ivf-memory":
        faiss.write_index(built.index, str(path))
    report.put({"train_seconds": built.train_seconds, "add_seconds": built.add_seconds,
                "tune_seconds": built.tune_seconds, "total_seconds": time.perf_counter() - started,
                "search_parameters": built.search_parameters, "held_out_recall": built.recall,
                "train_points": built.train_points, "peak_memory_bytes": peak_rss_bytes() - start_rss})


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across the spawn's exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def exact_answers(data: Synthetic, count: int, queries: np.ndarray) -> np.ndarray:
    """Ids of each query's exact top 10, by one streamed pass over the collection."""
    from compsearch.indexer.faiss_choice import normalised
    from compsearch.indexer.faiss_tuning import HeldOut

    exact = HeldOut(np.full(len(queries), -1, dtype=np.int64), queries)  # -1: no query is in the collection
    for ids, vectors in data.stream(count)():
        exact.see(ids, normalised(vectors))
    return exact.labels


def measure(kind: str, family: str, count: int, data: Synthetic, queries: np.ndarray, truth: np.ndarray,
            args: argparse.Namespace, folder: Path) -> dict:
    from compsearch.indexer.faiss_ondisk import lists_path
    from compsearch.search.index import read_faiss_index

    factory = factory_of(kind, count, args.pq, args.memory, args.lists)
    path = folder / f"{kind}.faiss"
    case = {"family": family, "count": count, "kind": kind, "factory": factory, "load_build": os.getloadavg()[0]}
    if kind in IN_MEMORY and count * (DIM * 4 + 8) > args.memory:
        case["skipped"] = f"{gb(count * (DIM * 4 + 8))} of vectors and ids held in memory > the {gb(args.memory)} budget"
        print(f"[{family} {count:,}] {kind}: {case['skipped']}", flush=True)
        return case
    print(f"[{family} {count:,}] {kind} {factory}: building", flush=True)
    report = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=_build, args=(kind, factory, count, data, path, args.target, report, args.train_per_list))
    child.start()
    case.update(report.get())
    child.join()
    case["train_per_list"] = args.train_per_list
    case["index_bytes"] = sum(file.stat().st_size for file in (path, lists_path(path)) if file.exists())
    index = read_faiss_index(path, case["search_parameters"])
    case["load_search"] = os.getloadavg()[0]
    found = index.search(queries, TOP)[1]
    case["recall"] = float(np.mean([len(set(f) & set(t)) / TOP for f, t in zip(found, truth)]))
    timed = args.flat_latency_queries if kind == "flat" else args.latency_queries
    case["latency_ms"] = single_query_latency(index, queries[:timed])
    case["latency_queries"] = timed
    print(f"[{family} {count:,}] {kind}: {case}", flush=True)
    del index
    gc.collect()
    for file in folder.iterdir():
        file.unlink()
    return case


def gib(count: float) -> str:
    return f"{count / (1 << 30):,.2f} GiB"


def gb(count: float) -> str:
    return f"{count / 1e9:,.1f} GB"


def report(raw: dict) -> str:
    commands = " then ".join(f"`{command}`" for command in raw["commands"])
    lines = [
        "## FAISS at scale: index types built in memory and merged on disk (CPU)",
        "",
        f"{commands} (their cases gathered in one raw file: `--append`). Machine: {raw['machine']}. "
        "The 1-minute load average is given beside each figure (build / search): above the core count, other "
        "processes shared the cores, and times are upper bounds.",
        "",
        f"768-d vectors from `search_latency.py`'s spectrum-matched generator (`clustered`: {raw['clustered']['clusters']} "
        f"clusters holding {raw['clustered']['between']:.0%} of the variance, fitted to the photos' neighbour cosines; "
        "`gaussian`: no structure beyond the covariance), streamed in chunks of 50,000. Each index built by the "
        "indexer's `build_index` in a child process (peak memory: its peak RSS above its start, which counts the "
        "resident pages of the memory-mapped `.ivfdata` it writes and tunes on); `Flat` and "
        "`ivf-memory` filled in one process and written as one file, the others built one part per 50,000-vector "
        "shard and merged into an on-disk `.ivfdata` file; *auto*: the type `--index auto` picks for that size with "
        "half this machine's memory as budget. *Trained on*: the coarse quantizer's (and PQ's) training sample, "
        "drawn at 1.2 × the stated vectors per list. nprobe chosen by the build for recall@10 ≥ "
        f"{raw['target']} on {raw['held_out']} held-out vectors of the collection (recall reached there: "
        f"*held-out*); *recall@10*: {raw['queries']} fresh queries (never indexed) against their exact answers, "
        "computed by streaming the collection. Latency: single queries (batch 1, top 10), index opened as the "
        "search layer opens it (memory-mapped).",
        "",
        "| vectors | count | index | built | trained on | search parameters | held-out | recall@10 | p50 ms | p95 ms "
        "| queries timed | build s (train + add + tune) | peak memory | index size | load (build / search) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in raw["cases"]:
        built = "in memory" if case["kind"] in IN_MEMORY else "parts merged on disk"
        label = f"{case['factory']}{' (auto)' if case['kind'] == 'auto' else ''}"
        if "skipped" in case:
            lines.append(f"| {case['family']} | {case['count']:,} | {label} | not built: {case['skipped']} "
                         "| | | | | | | | | | | |")
            continue
        if case["factory"] == "Flat":
            trained = "–"
        else:  # the runs before the sample's size was recorded state only the rule
            count = f"{case['train_points']:,} " if "train_points" in case else ""
            trained = f"{count}({case['train_per_list']}/list)"
        parameters = ", ".join(f"{key} {value}" for key, value in case["search_parameters"].items()) or "–"
        held_out = f"{case['held_out_recall']:.3f}" if case["held_out_recall"] is not None else "–"
        lines.append(
            f"| {case['family']} | {case['count']:,} | {label} | {built} | {trained} | {parameters} | {held_out} | "
            f"{case['recall']:.3f} | {case['latency_ms']['p50']:.2f} | {case['latency_ms']['p95']:.2f} | "
            f"{case['latency_queries']} | "
            f"{case['train_seconds']:.0f} + {case['add_seconds']:.0f} + {case['tune_seconds']:.0f} | "
            f"{gib(case['peak_memory_bytes'])} | {gib(case['index_bytes'])} | "
            f"{case['load_build']:.1f} / {case['load_search']:.1f} |")
    from compsearch.indexer.faiss_choice import choose_factory

    sizes = sorted({case["count"] for case in raw["cases"]})
    lines += ["", "`auto` on this machine (half its memory as budget): " + "; ".join(
                  f"{count:,} → `{choose_factory(count, DIM)}`" for count in sizes) + ". Rows with other list counts "
              "were asked for with `--lists` (see the commands).",
              "", "What was not measured here, and the arithmetic that extrapolates these rows to 1e9 vectors, is in "
              "`docs/scaling.md`."]
    return "\n".join(lines)


def measure_all(args: argparse.Namespace) -> dict:
    """Every case asked for, the raw file rewritten after each; with ``--append``, added to it."""
    from decompose_speed import machine

    from compsearch.indexer.faiss_choice import TUNING_QUERIES

    command = command_line("benchmarks/faiss_scale.py", ("OMP_NUM_THREADS",))
    if args.append:
        raw = json.loads(args.raw.read_text())
        raw["commands"].append(command)
    else:
        if args.spectrum_from:  # the fitted spectrum and clusters of an earlier run (this or search_latency.py)
            earlier = json.loads(args.spectrum_from.read_text())
            spectrum, shape = earlier["spectrum"], earlier["clustered"]
        else:
            spectrum = spectrum_model(real_vectors())
            shape = calibrate(spectrum)
        raw = {"commands": [command], "machine": machine(), "spectrum": spectrum, "clustered": shape,
               "target": args.target, "held_out": TUNING_QUERIES, "queries": args.queries, "cases": []}
    shapes = {"clustered": raw["clustered"], "gaussian": {"clusters": 1, "between": 0.0}}
    measured = {(case["family"], case["count"], case["kind"]) for case in raw["cases"]}
    for family in args.families.split(","):
        for count in [int(size) for size in args.sizes.split(",")]:
            kinds = [kind for kind in args.types.split(",") if (family, count, kind) not in measured]
            if not kinds:
                continue
            data = Synthetic(raw["spectrum"], count, shapes[family]["clusters"], shapes[family]["between"])
            fresh = Synthetic(raw["spectrum"], 10**9 + count, shapes[family]["clusters"], shapes[family]["between"])
            queries = fresh.sample(raw["queries"])
            truth = exact_answers(data, count, queries)
            with tempfile.TemporaryDirectory(prefix="faiss-scale-", dir=args.raw.parent) as folder:
                for kind in kinds:
                    raw["cases"].append(measure(kind, family, count, data, queries, truth, args, Path(folder)))
                    args.raw.write_text(json.dumps(raw, indent=1))  # a later failure keeps what was measured
    return raw


def main() -> None:
    from compsearch.indexer.faiss_choice import MIN_POINTS_PER_LIST, TRAIN_POINTS_PER_LIST, default_memory_budget

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated collection sizes")
    parser.add_argument("--families", default="clustered,gaussian", help="clustered, gaussian or both")
    parser.add_argument("--types", default=",".join(DEFAULT_TYPES), help=f"comma-separated index types of {TYPES}")
    parser.add_argument("--memory", type=int, default=default_memory_budget(),
                        help="bytes an index may hold in memory (auto's budget; in-memory types beyond are skipped)")
    parser.add_argument("--lists", type=int, help="inverted lists of the IVF types (default: auto's, about 4·√n)")
    parser.add_argument("--pq", type=int, default=96, help="PQ code bytes of hnsw-pq-disk (a divisor of 768)")
    parser.add_argument("--train-per-list", type=int, default=TRAIN_POINTS_PER_LIST,
                        help=f"training vectors per inverted list (at least {MIN_POINTS_PER_LIST}; k-means time grows with it)")
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 the builds tune nprobe for")
    parser.add_argument("--queries", type=int, default=500, help="fresh queries for recall@10")
    parser.add_argument("--latency-queries", type=int, default=200, help="single queries timed per index")
    parser.add_argument("--flat-latency-queries", type=int, default=20, help="single queries timed against flat")
    parser.add_argument("--spectrum-from", type=Path, help="reuse the spectrum and clusters of an earlier raw file")
    parser.add_argument("--append", action="store_true",
                        help="add to the cases of the --raw file (its spectrum and queries reused; cases it holds skipped)")
    raw_options(parser, "faiss_scale.json")
    args = parser.parse_args()
    report_raw(args, SECTION, lambda: measure_all(args), report)


if __name__ == "__main__":
    main()
