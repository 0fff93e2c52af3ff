"""What `compsearch index --backend ray` costs against one process, on the same machine.

Side by side in one run, on the sample photos (real JPEGs) with the real DeiT-tiny weights:
the in-process runner (the loader's workers, the model in this process, its default
parallelism) and the same with one model thread (what each Ray actor runs on a 2-core cluster), and
the Ray runner on a local cluster of this machine's cores (decode tasks,
CPU encoder actors, write tasks), each a whole `Indexer.run` (FAISS build included, the same
in both). The cluster's start is timed apart (a real cluster is up already); the Ray run's
wall time includes starting its actors and loading the model in them. The 1-minute load
average is printed beside each figure: the machine is shared, and the ratio means little
when the load is far above the cores. Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/ray_overhead.py --images 300
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.mapping.models import load_model
from index_speed import PHOTOS, listing_of
from results_section import DEIT_WEIGHTS, publish, shared_cpu

MODEL = "deit_tiny_patch16_224"


def timed_run(listing: Path, out: Path, settings: IndexSettings) -> tuple[float, int, float]:
    """(seconds, images indexed, 1-minute load average at the end) of one whole build."""
    artifacts = encoder_for_build(load_model(MODEL, weights=DEIT_WEIGHTS), out)
    started = time.perf_counter()
    summary = Indexer(out, artifacts.encoder, settings, artifacts.provenance).run(listing)
    return time.perf_counter() - started, summary.images, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--chunk-size", type=int, default=32, help="images per unit (one Ray row)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs the local Ray cluster offers")
    args = parser.parse_args()
    import ray

    settings = IndexSettings(batch_size=args.batch_size, chunk_size=args.chunk_size, progress=False)
    with tempfile.TemporaryDirectory() as folder:
        listing = listing_of(PHOTOS, args.images, Path(folder))
        load_before = os.getloadavg()[0]
        process_s, process_images, process_load = timed_run(listing, Path(folder) / "process", settings)
        # the same threads as the Ray actor on this cluster (ray_runner._pool): a fair pair under load
        one_s, _, one_load = timed_run(listing, Path(folder) / "one-thread", dataclasses.replace(settings, threads=1))
        started = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="error", log_to_driver=False)
        cluster_s = time.perf_counter() - started
        try:
            ray_s, ray_images, ray_load = timed_run(listing, Path(folder) / "ray",
                                                    dataclasses.replace(settings, backend="ray"))
        finally:
            ray.shutdown()
    assert ray_images == process_images, (ray_images, process_images)
    publish("ray_overhead", [
        "## Ray backend against one process (CPU)",
        "",
        f"`.venv/bin/python benchmarks/ray_overhead.py --images {args.images} --chunk-size {args.chunk_size} "
        f"--batch-size {args.batch_size} --cpus {args.cpus}` — {MODEL} (real weights), {args.images} real JPEGs, "
        f"units of {args.chunk_size} images; {shared_cpu()}; Ray {ray.__version__}, a local cluster of "
        f"{args.cpus} CPUs.",
        "",
        "| runner | wall s | images/s | load average (1 min) at the end |",
        "|---|---|---|---|",
        f"| one process (loader workers + model here) | {process_s:.1f} | {process_images / process_s:.1f} | "
        f"{process_load:.1f} (before: {load_before:.1f}) |",
        f"| one process, 1 model thread (as each Ray actor here) | {one_s:.1f} | {process_images / one_s:.1f} | "
        f"{one_load:.1f} |",
        f"| Ray Data (decode tasks → encoder actors → write tasks) | {ray_s:.1f} | {ray_images / ray_s:.1f} | "
        f"{ray_load:.1f} |",
        f"| local cluster start (apart; a real cluster is up already) | {cluster_s:.1f} | | |",
        "",
        f"Ray / one process: **{ray_s / process_s:.2f}×** the wall time (default threads), "
        f"**{ray_s / one_s:.2f}×** against 1 model thread, for the same {ray_images} images (same ids and rows). "
        "On a quiet machine Ray can only add (actor start and a model load per actor, pickled batches through "
        "the object store, scheduling); what it buys is more machines and GPUs. With the load average far above "
        "the cores, the ratios mostly measure contention: a model running several torch threads waits on each "
        "of them when other processes hold the cores.",
    ])


if __name__ == "__main__":
    main()
