"""How fast `compsearch index` runs against its stages on real JPEGs, and what memory it holds.

Side by side in one process, on the sample photos (real JPEGs: decoding is part of the cost):

1. decode only: the image layer's loader (read, hash, PIL decode, the model's transform) with
   0, 1, 2 … workers, no model;
2. plain forward: the model alone on preprocessed tensors already in memory (no reading, no
   decoding, no decomposition), with the torch thread count of each pipeline configuration;
3. end to end: the indexer (decode → decomposition + property vectors → Parquet shards) per
   configuration W/T (W decoding workers, T model threads; ``auto``: what `index` chooses
   from the cores), FAISS build excluded and reported apart. The ratio end to end / plain
   forward is a ratio of times per image at the same T (target ≤ 1.1×), and also against the
   fastest plain forward of any T.

Then `compsearch index` itself runs in a subprocess with its defaults: wall time, model load
time, and the peak memory of the whole process tree (main process + decoding workers), sampled
every 20 ms from /proc: the sum of PSS (shared pages counted once, split between sharers) and
the sum of RSS (shared pages counted per process), beside getrusage's max RSS of one process.
Model load time with weights from a file: the old path (random init, then the weights) against
the one that builds the model without initialising it (the weights are a saved random model).
Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/index_speed.py --models deit_tiny_patch16_224 vit_base_patch16_224 --images 800 96
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.faiss_choice import build_index
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.images import iter_batches
from compsearch.mapping.images.parallelism import choose_parallelism, usable_cores
from compsearch.mapping.models import load_model
from results_section import publish

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"


def listing_of(folder: Path, count: int, out: Path) -> Path:
    """A listing file of the first ``count`` JPEGs of ``folder`` (absolute paths)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:count]
    if len(files) < count:
        sys.exit(f"{folder} holds {len(files)} JPEGs, fewer than --images {count}")
    listing = out / f"photos-{count}.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    return listing


def decode_only(listing: Path, preprocess, batch_size: int, workers: int) -> float:
    torch.set_num_threads(1)  # as a worker runs; workers 0: the main process decodes alone
    started = time.perf_counter()
    count = sum(len(batch) for batch in iter_batches(listing, [preprocess], batch_size, workers))
    return count / (time.perf_counter() - started)


def plain_forward(model, batches: list[torch.Tensor], threads: int) -> float:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        model.encode_images(batches[0])  # warm-up
        started = time.perf_counter()
        for pixels in batches:
            model.encode_images(pixels)
    return sum(map(len, batches)) / (time.perf_counter() - started)


def end_to_end(model, listing: Path, batch_size: int, workers: int | None, threads: int | None) -> tuple[float, float]:
    """(images/s without the FAISS build, FAISS build seconds), after a warm-up run over one
    batch (as the plain forward gets one): first-call costs are not the pipeline's rate."""
    encoder = PropertyEncoder(model)
    settings = IndexSettings(batch_size=batch_size, workers=workers, threads=threads, progress=False)
    with tempfile.TemporaryDirectory() as out:
        warm_up = Path(out) / "warm-up.txt"
        warm_up.write_text("".join(line + "\n" for line in listing.read_text().split()[:batch_size]))
        Indexer(Path(out) / "warm", encoder, settings).run(warm_up)
        indexer = Indexer(Path(out) / "index", encoder, settings)
        started = time.perf_counter()
        summary = indexer.run(listing)
        total = time.perf_counter() - started
        build = sum(entry.train_seconds + entry.add_seconds
                    for entry in indexer.store.read_manifest().indexes.values())
    return summary.added / (total - build), build


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/*/task/*/children)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack += [int(child) for child in children.read().split()]
        except OSError:
            pass  # it exited meanwhile
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB, from smaps_rollup; (0, 0) once it has exited."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                name, _, rest = line.partition(":")
                if name in ("Pss", "Rss"):
                    values[name] = int(rest.split()[0])
    except OSError:
        return 0, 0
    return values.get("Pss", 0), values.get("Rss", 0)


def index_command(listing: Path, model_name: str, batch_size: int, options: list[str]) -> dict[str, float]:
    """`compsearch index` in a subprocess (its defaults, then ``options``): wall seconds and peak
    memory (MiB) of its process tree."""
    peaks = {"pss": 0, "rss": 0, "processes": 0}
    done = threading.Event()

    def sample(pid: int) -> None:
        while not done.is_set():
            tree = _tree(pid)
            pss, rss = map(sum, zip(*(_memory_kib(p) for p in tree)))
            peaks.update(pss=max(peaks["pss"], pss), rss=max(peaks["rss"], rss),
                         processes=max(peaks["processes"], len(tree)))
            time.sleep(0.02)

    with tempfile.TemporaryDirectory() as out:
        command = [str(Path(sys.executable).with_name("compsearch")), "index", str(listing), "--out", f"{out}/index",
                   "--model", model_name, "--random-init", "--batch-size", str(batch_size), "--device", "cpu",
                   "--json", *options]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sampler = threading.Thread(target=sample, args=(process.pid,), daemon=True)
        sampler.start()
        _, errors = process.communicate()
        done.set()
        sampler.join()
        if process.returncode:
            sys.exit(f"compsearch index failed: {errors[-2000:]}")
    return {"seconds": time.perf_counter() - started, "pss": peaks["pss"] / 1024, "rss": peaks["rss"] / 1024,
            "processes": peaks["processes"],
            "child_max_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def load_seconds(model_name: str, out: Path) -> tuple[float, float]:
    """(seconds with init then weights, seconds without init) to load ``model_name``'s weights
    from a file, each in a fresh process (best of two)."""
    from safetensors.torch import save_file

    weights = out / f"{model_name}.safetensors"
    save_file({k: v.contiguous() for k, v in load_model(model_name, pretrained=False).model.state_dict().items()},
              str(weights))
    code = ("import time, sys; from compsearch.mapping import models; {}; s = time.perf_counter();"
            f"models.load_model({model_name!r}, weights={str(weights)!r}); print(time.perf_counter() - s)")
    old = "models._build_without_init = lambda *a, **k: None"  # the old path: init, then load
    times = []
    for setup in (old, "pass"):
        runs = [float(subprocess.run([sys.executable, "-c", code.format(setup)], capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for _ in range(2)]
        times.append(min(runs))
    return times[0], times[1]


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


def _configuration(text: str) -> tuple[int | None, int | None]:
    """"W/T" → (W, T); "auto" → (None, None): what `index` chooses."""
    if text == "auto":
        return None, None
    workers, threads = text.split("/")
    return int(workers), int(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "vit_base_patch16_224"],
                        help="timm or open_clip names, random weights")
    parser.add_argument("--images", type=int, nargs="+", default=[800, 96],
                        help="photos per model (one number for all, or one per model)")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="a folder of JPEGs")
    parser.add_argument("--configs", nargs="+", default=["auto", "0/2", "1/1", "1/2", "2/2"],
                        help="end-to-end configurations W/T (decoding workers / model threads), or auto")
    parser.add_argument("--decode-workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-command", action="store_true", help="skip the `compsearch index` subprocess run")
    parser.add_argument("--no-load", action="store_true", help="skip the model load-time comparison")
    parser.add_argument("--build-count", type=int, default=100_000, help="synthetic vectors per FAISS build (0: skip)")
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32", "IVF1024,Flat", "IVF1024,PQ64"])
    args = parser.parse_args()
    images = args.images * len(args.models) if len(args.images) == 1 else args.images
    configs = [_configuration(text) for text in args.configs]
    load_before = os.getloadavg()
    cores = usable_cores()
    auto = choose_parallelism("cpu")
    describe = lambda w, t: f"{w}/{t}" if w is not None else f"auto ({auto.workers}/{auto.threads})"  # noqa: E731

    command = ".venv/bin/python benchmarks/index_speed.py " + " ".join(sys.argv[1:])

    def write(lines: list[str], done: bool) -> None:
        load_now = os.getloadavg()
        publish("index-speed", [
            "## Indexing speed on real JPEGs (CPU)", "",
            f"`{command.rstrip()}` — {cores} usable cores (auto chooses {auto.workers} decoding worker(s), "
            f"{auto.threads} model thread(s)), torch {torch.__version__}, random weights, batch {args.batch_size}; "
            f"load average {load_before[0]:.1f} before, {load_now[0]:.1f} {'after' if done else 'so far'} (1 min)"
            f"{'' if done else '; a partial run: the models below only'}.", "", *lines])

    lines = []
    out = Path(tempfile.mkdtemp())
    for model_name, count in zip(args.models, images):
        listing = listing_of(args.photos, count, out)
        model = load_model(model_name, pretrained=False)
        decode = {w: decode_only(listing, model.preprocess, args.batch_size, w) for w in args.decode_workers}
        print(f"{model_name}: decode only " + ", ".join(f"{w} workers {r:.0f} img/s" for w, r in decode.items()),
              flush=True)
        batches = [batch.pixels[0] for batch in iter_batches(listing, [model.preprocess], args.batch_size, 0)]
        thread_counts = sorted({t if t is not None else auto.threads for _, t in configs})
        forward = {t: plain_forward(model, batches, t) for t in thread_counts}
        print(f"{model_name}: plain forward " + ", ".join(f"{t} threads {r:.1f} img/s" for t, r in forward.items()),
              flush=True)
        rows = []
        for workers, threads in configs:
            rate, build = end_to_end(model, listing, args.batch_size, workers, threads)
            same = forward[threads if threads is not None else auto.threads]
            rows.append((describe(workers, threads), rate, same / rate, max(forward.values()) / rate, build))
            print(f"{model_name}: end to end {rows[-1][0]}: {rate:.1f} img/s, {same / rate:.2f}× the plain "
                  f"forward at the same threads, {rows[-1][3]:.2f}× the fastest", flush=True)
        del batches
        lines += [
            f"**{model_name}** — {count} photos. Decode only (read + sha256 + PIL decode + the model's transform): "
            + ", ".join(f"{w} workers {r:.0f} img/s" for w, r in decode.items()) + ". Plain forward: "
            + ", ".join(f"{t} thread{'s' * (t > 1)} {r:.1f} img/s" for t, r in forward.items()) + ".", "",
            "| W/T (workers / model threads) | end to end img/s | time ÷ plain forward, same threads "
            "| time ÷ fastest plain forward | FAISS build s |",
            "|---|---:|---:|---:|---:|",
            *[f"| {c} | {r:.1f} | {s:.2f}× | {f:.2f}× | {b:.2f} |" for c, r, s, f, b in rows], "",
        ]
        if not args.no_command:
            lines += [f"`compsearch index --random-init` over the {count} photos in a fresh process (wall time "
                      "includes start-up and model build; peak memory of the process tree, sampled from /proc):", "",
                      "| options | wall s | processes | PSS summed MiB | RSS summed MiB |", "|---|---:|---:|---:|---:|"]
            for options in (["--workers", "auto"], ["--workers", "2", "--threads", "2"]):
                run = index_command(listing, model_name, args.batch_size, options)
                print(f"{model_name}: compsearch index {' '.join(options)}: {run}", flush=True)
                lines.append(f"| `{' '.join(options)}` | {run['seconds']:.1f} | {run['processes']} | {run['pss']:.0f} "
                             f"| {run['rss']:.0f} |")
            lines += ["", f"Largest single process over these runs (getrusage children max RSS): "
                      f"{run['child_max_rss']:.0f} MiB.", ""]
        if not args.no_load:
            with_init, without = load_seconds(model_name, out)
            print(f"{model_name}: load from a weights file {with_init:.2f} s → {without:.2f} s", flush=True)
            lines += [f"Loading {model_name} from a weights file (fresh process, best of 2): {with_init:.2f} s "
                      f"building with random init then loading → {without:.2f} s building without init.", ""]
        write(lines, done=False)  # a run stopped later still leaves the models measured so far
    if args.build_count:
        builds = index_build_seconds(args.build_count, 768, args.factories)
        lines += [f"FAISS build time over {args.build_count} synthetic 768-d vectors (power-law spectrum):", "",
                  "| index | build s |", "|---|---:|", *[f"| {f} | {s:.1f} |" for f, s in builds.items()], ""]
    write(lines, done=True)

if __name__ == "__main__":
    main()
