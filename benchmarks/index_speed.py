"""How fast `compsearch index` runs against its stages, and what memory it holds.

In one process, on the same world renders (224 px PNGs, written once into a cache folder):

1. decode only: the image layer's DataLoader with the same workers, no model;
2. plain forward: the model's own z on images decoded beforehand (no decoding, no split);
3. end to end: the indexer (decode in workers → decomposition + property vectors → Parquet
   shards), FAISS build excluded and reported apart.

The pipeline should run at its slowest stage: end to end ≥ 0.75× the plain forward on CPU
is the target. Peak RSS is measured in a fresh subprocess per collection size (indexer
only), so 1k and 10k images compare like for like. Index build time per index type is
measured on synthetic 768-d vectors. Writes its section of benchmarks/RESULTS.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/index_speed.py
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.faiss_choice import build_index
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.images import iter_batches
from compsearch.mapping.models import load_model
from results_section import write_section

CACHE = Path(os.environ.get("COMPSEARCH_CACHE", "~/.cache/compsearch")).expanduser() / "benchmarks"


def world_images(count: int) -> Path:
    """``count`` 224-px world renders, written once (rendering is resumable)."""
    folder = CACHE / "world-224"
    write_split(folder, get_split("test"), count, size=224, progress=False)
    listing = folder / f"first-{count}.txt"
    listing.write_text("\n".join(f"test/{i:06d}.png" for i in range(count)) + "\n")
    return listing


def decode_only(listing: Path, preprocess, batch_size: int, workers: int) -> float:
    started = time.perf_counter()
    count = sum(len(batch) for batch in iter_batches(listing, [preprocess], batch_size, workers))
    return count / (time.perf_counter() - started)


def plain_forward(model, listing: Path, batch_size: int) -> float:
    batches = [batch.pixels[0] for batch in iter_batches(listing, [model.preprocess], batch_size, 0)]
    model.encode_images(batches[0])  # warm-up
    started = time.perf_counter()
    count = 0
    for pixels in batches:
        model.encode_images(pixels)
        count += len(pixels)
    return count / (time.perf_counter() - started)


def end_to_end(model, listing: Path, batch_size: int, workers: int) -> tuple[float, float]:
    """(images/s without the FAISS build, FAISS build seconds), after a warm-up run over one
    batch (as the plain forward gets one): first-call costs are not the pipeline's rate."""
    encoder = PropertyEncoder(model)
    with tempfile.TemporaryDirectory() as out:
        warm_up = Path(out) / "warm-up.txt"
        warm_up.write_text("\n".join(listing.read_text().split()[:batch_size]) + "\n")
        (Path(out) / "test").symlink_to(listing.parent / "test")
        Indexer(Path(out) / "warm", encoder, IndexSettings(batch_size=batch_size, workers=workers,
                                                          progress=False)).run(warm_up)
        indexer = Indexer(Path(out) / "index", encoder, IndexSettings(batch_size=batch_size, workers=workers,
                                                                      progress=False))
        started = time.perf_counter()
        summary = indexer.run(listing)
        total = time.perf_counter() - started
        build = sum(entry.train_seconds + entry.add_seconds
                    for entry in indexer.store.read_manifest().indexes.values())
    return summary.added / (total - build), build


def peak_rss_mib(model_name: str, listing: Path, batch_size: int, workers: int) -> float:
    """Peak RSS of an indexing run in a fresh process (main process; workers apart)."""
    code = (
        "import resource, sys, tempfile; from pathlib import Path;"
        "from compsearch.indexer.build import IndexSettings, Indexer; from compsearch.mapping.encoder import PropertyEncoder;"
        "from compsearch.mapping.models import load_model;"
        f"m = load_model({model_name!r}, pretrained=False);"
        "d = tempfile.mkdtemp();"
        f"Indexer(Path(d) / 'i', PropertyEncoder(m), IndexSettings(batch_size={batch_size}, workers={workers},"
        f" progress=False)).run({str(listing)!r});"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    return int(output.stdout.strip().splitlines()[-1]) / 1024


def index_build_seconds(count: int, dim: int, factories: list[str]) -> dict[str, float]:
    rng = np.random.default_rng(0)
    spectrum = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)  # power-law variances, like real features
    vectors = rng.standard_normal((count, dim), dtype=np.float32) * spectrum

    def stream():
        for start in range(0, count, 8192):
            yield np.arange(start, min(start + 8192, count)), vectors[start:start + 8192]

    seconds = {}
    for factory in factories:
        built = build_index(factory, dim, count, stream)
        seconds[factory] = built.train_seconds + built.add_seconds
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "deit_base_patch16_224"])
    parser.add_argument("--images", type=int, default=512, help="images for the speed comparison")
    parser.add_argument("--rss-counts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--build-count", type=int, default=100_000, help="synthetic vectors per index build")
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32", "IVF1024,Flat", "IVF1024,PQ64"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    listing = world_images(args.images)
    speed_rows = []
    for name in args.models:
        model = load_model(name, pretrained=False)
        decode = decode_only(listing, model.preprocess, args.batch_size, args.workers)
        forward = plain_forward(model, listing, args.batch_size)
        indexed, build = end_to_end(model, listing, args.batch_size, args.workers)
        speed_rows.append((name, decode, forward, indexed, build))
        print(f"{name}: decode {decode:.1f} img/s, forward {forward:.1f} img/s, index {indexed:.1f} img/s "
              f"({indexed / forward:.2f}× forward), FAISS build {build:.2f} s", flush=True)
    rss_rows = []
    for count in args.rss_counts:
        rss = peak_rss_mib(args.models[0], world_images(count), args.batch_size, args.workers)
        rss_rows.append((count, rss))
        print(f"peak RSS indexing {count} images with {args.models[0]}: {rss:.0f} MiB", flush=True)
    builds = index_build_seconds(args.build_count, 768, args.factories)
    for factory, seconds in builds.items():
        print(f"build {factory} over {args.build_count} × 768: {seconds:.1f} s", flush=True)

    command = "OMP_NUM_THREADS={} .venv/bin/python benchmarks/index_speed.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv[1:])).rstrip()
    lines = [
        "## Indexing speed (CPU)", "", f"`{command}` — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, random weights, {args.images} world renders "
        f"(224 px PNG), batch {args.batch_size}, {args.workers} decoding workers.", "",
        "| model | decode only img/s | plain forward img/s | `index` end to end img/s | end to end / forward | FAISS build s |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {n} | {d:.1f} | {f:.1f} | {i:.1f} | {i / f:.2f}× | {b:.2f} |" for n, d, f, i, b in speed_rows],
        "", f"Peak RSS of the indexing process ({args.models[0]}; decoding workers not included):", "",
        "| images | peak RSS MiB |", "|---:|---:|", *[f"| {c} | {r:.0f} |" for c, r in rss_rows],
        "", f"FAISS build time over {args.build_count} synthetic 768-d vectors (power-law spectrum):", "",
        "| index | build s |", "|---|---:|", *[f"| {f} | {s:.1f} |" for f, s in builds.items()],
    ]
    write_section("index-speed", "\n".join(lines))


if __name__ == "__main__":
    main()
