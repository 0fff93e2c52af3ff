"""Search latency and recall at scale, and end-to-end query latency on real indexes (CPU).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/search_latency.py [--sizes 100000,1000000]

(PASSIVE: on a 2-core machine shared with other jobs, torch's spinning OpenMP threads made
one DeiT-tiny decomposition at batch 1 take 0.3–4.9 s instead of ~0.15 s.)

1. **Vectors as hard as real ones.** Real DeiT-tiny representations z of the 800 sample
   photos (../shared/data/imagenet-sample), normalised as the indexes store them: their mean
   and the eigenvalues λ_i of their covariance. A power law λ_i ∝ i^-α fitted to the ranked
   eigenvalues extends the spectrum to 768 dimensions. Two families share that spectrum and
   the real ratio ‖mean‖² / Σλ (the eigenbasis left axis-aligned: inner products, k-means and
   so IVF,Flat are rotation-invariant):
   - ``gaussian``: mean + N(0, diag λ) — no neighbourhood structure at all. Its nearest
     neighbours are farther than the photos' (top-1 cosine ≈ 0.27 against 0.44 for DeiT-tiny):
     a worst case, harder than real vectors;
   - ``clustered``: J cluster centres ~ N(0, β·diag λ), each vector a centre plus
     N(0, (1−β)·diag λ) — the same covariance, with (J, β) fitted so that 800 vectors drawn
     from it have the photos' mean top-1 and top-10 nearest-neighbour cosines. At scale its
     clusters are atoms a few inverted lists wide, so it may be easier than photos: real
     vectors should lie between the two families.
2. **Search step at 100k and 1M** (768-d): Flat and the index ``auto`` picks
   (:func:`indexer.faiss_choice.choose_factory`), both built by the indexer's own
   :func:`indexer.faiss_choice.build_index`, written to disk and opened as the search layer
   opens them (memory-mapped, :func:`search.index.read_faiss_index`). Latency p50/p95 of single
   queries (batch 1, top 10) after a warm-up; recall@10 against Flat on queries drawn from the
   same distribution but not in the index; for IVF, a sweep over nprobe with the one the build
   chose (recorded in the raw file's ``search_parameters``) marked. ``clustered`` at ``--sizes``,
   ``gaussian`` at ``--gaussian-sizes``.
3. **End to end** through :class:`search.index.SearchIndex` on two real index directories
   (the world rendered for the fixture CLIP, identity-aligned; DeiT-tiny on the sample
   photos, model space): encode (text embedding, or image decode + decomposition), search
   (FAISS + exact rescoring + rows) and total, p50 over repeated queries with models warm.

Raw measurements go to a JSON file (``--raw``); ``--report RAW`` rewrites the section from
one without measuring again. Prints the tables and rewrites its section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from results_section import DEIT_WEIGHTS, SHARED, command_line, raw_options, report_raw

DIM = 768
CHUNK = 50_000  # synthetic vectors generated (and streamed to the index builder) per chunk
TOP = 10
SAMPLE = SHARED / "data" / "imagenet-sample"
FIT_RANKS = (2, 128)  # power-law fit range: past the leading direction, before the finite-sample tail


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- 1. the spectrum of real vectors ----------------------------------------------------------------
def real_vectors() -> np.ndarray:
    """Normalised DeiT-tiny z of the sample photos (what a model-space ``full`` index holds)."""
    import torch

    from compsearch.mapping.images import preprocess_batch
    from compsearch.mapping.models import load_model

    model = load_model("deit_tiny_patch16_224", weights=DEIT_WEIGHTS)
    paths = sorted(SAMPLE.iterdir())
    with torch.inference_mode():
        z = torch.cat([model.encode_images(preprocess_batch(paths[i:i + 32], model)) for i in range(0, len(paths), 32)])
    z = torch.nn.functional.normalize(z.float(), dim=-1)
    return z.numpy()


def spectrum_model(vectors: np.ndarray, dim: int = DIM) -> dict:
    """Mean norm, eigenvalues and the fitted power law of ``vectors``; the synthetic spectrum."""
    mean = vectors.mean(0)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(vectors - mean, rowvar=False)))[::-1].clip(min=0)
    ranks = np.arange(FIT_RANKS[0], min(FIT_RANKS[1], len(eigenvalues)) + 1)
    slope, intercept = np.polyfit(np.log(ranks), np.log(eigenvalues[ranks - 1]), 1)
    synthetic = np.exp(intercept) * np.arange(1, dim + 1, dtype=np.float64) ** slope
    ratio = float(mean @ mean / eigenvalues.sum())  # how tightly the vectors gather around their mean
    return {"alpha": -float(slope), "mean_ratio": ratio, "real_dim": vectors.shape[1], "real_images": len(vectors),
            "eigenvalues": synthetic.tolist(), "mean_norm": float(np.sqrt(ratio * synthetic.sum())),
            "real_participation": participation(eigenvalues), "synthetic_participation": participation(synthetic),
            "real_neighbours": neighbour_cosines(vectors)}


def participation(eigenvalues: np.ndarray) -> float:
    """(Σλ)² / Σλ²: how many directions the variance effectively spreads over."""
    return float(eigenvalues.sum() ** 2 / (eigenvalues ** 2).sum())


def neighbour_cosines(vectors: np.ndarray) -> dict[str, float]:
    """Mean cosine of each vector's nearest and 10 nearest others: how much neighbourhood
    structure a set has beyond its covariance."""
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    gram = normalised @ normalised.T
    np.fill_diagonal(gram, -np.inf)
    nearest = -np.sort(-gram, axis=1)[:, :TOP]
    return {"top1": float(nearest[:, 0].mean()), "top10": float(nearest.mean())}


class Synthetic:
    """Vectors mean + centre + N(0, (1−β)·diag λ), centres ~ N(0, β·diag λ) (one of ``clusters``,
    uniformly; β = 0: plain Gaussian), generated chunk by chunk from (seed, chunk) alone. The
    mean and the centres come from fixed seeds: every set drawn shares one distribution."""

    def __init__(self, spectrum: dict, seed: int, clusters: int = 1, between: float = 0.0) -> None:
        scale = np.sqrt(np.asarray(spectrum["eigenvalues"], dtype=np.float32))
        rng = np.random.default_rng(12345)
        direction = rng.standard_normal(len(scale)).astype(np.float32)
        self.mean = direction / np.linalg.norm(direction) * spectrum["mean_norm"]
        self.centres = rng.standard_normal((clusters, len(scale)), dtype=np.float32) * scale * np.sqrt(between)
        self.scale = scale * np.float32(np.sqrt(1.0 - between))
        self.seed = seed

    def chunk(self, number: int, rows: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, number])
        centres = self.centres[rng.integers(len(self.centres), size=rows)]
        return rng.standard_normal((rows, len(self.scale)), dtype=np.float32) * self.scale + centres + self.mean

    def stream(self, count: int) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for number, start in enumerate(range(0, count, CHUNK)):
                rows = min(CHUNK, count - start)
                yield np.arange(start, start + rows, dtype=np.int64), self.chunk(number, rows)
        return chunks

    def sample(self, count: int) -> np.ndarray:
        from compsearch.indexer.faiss_choice import normalised

        return normalised(np.concatenate([vectors for _, vectors in self.stream(count)()]))


CLUSTER_COUNTS = (25, 50, 100, 200, 400, 800)
BETWEEN_SHARES = tuple(np.round(np.arange(0.05, 0.81, 0.05), 2))


def calibrate(spectrum: dict, samples: int = 2) -> dict:
    """(J, β) whose 800-vector draws have the photos' nearest-neighbour cosines (least squares
    on top-1 and top-10), searched on a grid."""
    target = spectrum["real_neighbours"]
    best = None
    for clusters in CLUSTER_COUNTS:
        for between in BETWEEN_SHARES:
            draws = [neighbour_cosines(Synthetic(spectrum, seed, clusters, between).sample(spectrum["real_images"]))
                     for seed in range(samples)]
            found = {key: float(np.mean([draw[key] for draw in draws])) for key in target}
            error = sum((found[key] - target[key]) ** 2 for key in target)
            if best is None or error < best["error"]:
                best = {"clusters": clusters, "between": float(between), "neighbours": found, "error": error}
    return best


# -- 2. the search step at scale ---------------------------------------------------------------------
def single_query_latency(index, queries: np.ndarray, warmup: int = 5) -> dict[str, float]:
    for query in queries[:warmup]:
        index.search(query[None], TOP)
    samples = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], TOP)
        samples.append(time.perf_counter() - started)
    return {key: value * 1e3 for key, value in percentiles(samples).items()}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / TOP for f, t in zip(found, truth)]))


def built_and_reopened(factory: str, count: int, data: Synthetic, folder: Path) -> tuple[object, dict]:
    """Build ``factory`` with the indexer's builder, write it, reopen it as the search layer does."""
    import faiss

    from compsearch.indexer.faiss_choice import build_index
    from compsearch.search.index import read_faiss_index

    before = rss_bytes()
    built = build_index(factory, DIM, count, data.stream(count))
    path = folder / f"{factory}.faiss"
    faiss.write_index(built.index, str(path))
    resident = rss_bytes() - before
    del built.index
    gc.collect()
    index = read_faiss_index(path, built.search_parameters)
    entry = {"factory": built.factory, "train_seconds": built.train_seconds, "add_seconds": built.add_seconds,
             "file_bytes": path.stat().st_size, "build_rss_bytes": resident, "search_parameters": built.search_parameters}
    return index, entry


def scale_case(family: str, count: int, spectrum: dict, shape: dict, queries: int, latency_queries: int,
               flat_latency_queries: int, nprobes: list[int]) -> dict:
    import faiss

    data = Synthetic(spectrum, count, shape["clusters"], shape["between"])
    query_vectors = Synthetic(spectrum, 10**9 + count, shape["clusters"], shape["between"]).sample(queries)  # not indexed
    case: dict = {"family": family, "count": count, "queries": queries}
    with tempfile.TemporaryDirectory(prefix="search-latency-") as temporary:
        folder = Path(temporary)
        print(f"[{family} {count}] Flat: building", flush=True)
        flat, case["flat"] = built_and_reopened("Flat", count, data, folder)
        started = time.perf_counter()
        _, truth = flat.search(query_vectors, TOP)
        case["flat"]["batch_seconds"] = time.perf_counter() - started
        case["flat"]["latency_ms"] = single_query_latency(flat, query_vectors[:flat_latency_queries])
        case["flat"]["latency_queries"] = flat_latency_queries
        print(f"[{family} {count}] Flat: {case['flat']}", flush=True)
        del flat
        gc.collect()
        print(f"[{family} {count}] auto: building", flush=True)
        auto, case["auto"] = built_and_reopened("auto", count, data, folder)
        print(f"[{family} {count}] auto: {case['auto']}", flush=True)
        case["auto"]["sweep"] = []
        if case["auto"]["factory"].startswith("IVF"):
            ivf = faiss.extract_index_ivf(auto)
            case["auto"]["nlist"] = ivf.nlist
            for nprobe in sorted({*nprobes, case["auto"]["search_parameters"]["nprobe"]}):
                if nprobe > ivf.nlist:
                    continue
                ivf.nprobe = nprobe
                _, found = auto.search(query_vectors, TOP)
                point = {"nprobe": nprobe, "recall": recall(found, truth),
                         "latency_ms": single_query_latency(auto, query_vectors[:latency_queries])}
                case["auto"]["sweep"].append(point)
                print(f"[{family} {count}] nprobe {nprobe}: {point}", flush=True)
        else:
            _, found = auto.search(query_vectors, TOP)
            case["auto"]["sweep"].append({"nprobe": None, "recall": recall(found, truth),
                                          "latency_ms": single_query_latency(auto, query_vectors[:latency_queries])})
        del auto
        gc.collect()
    return case


# -- 3. end to end on real index directories ---------------------------------------------------------
def end_to_end(repeats: int) -> list[dict]:
    """encode / search / total through SearchIndex, models warm, on a world index and the photos."""
    from compsearch.indexer.artifacts import encoder_for_build
    from compsearch.indexer.build import IndexSettings, Indexer
    from compsearch.indexer.world import get_split, write_split
    from compsearch.indexer.world.fixture_clip import fixture_clip_dir
    from compsearch.mapping.align import save_aligner
    from compsearch.mapping.align.run import identity_aligner
    from compsearch.mapping.models import load_model
    from compsearch.search import Term, open_index

    rows = []
    settings = IndexSettings(batch_size=32, workers=0, progress=False)
    with tempfile.TemporaryDirectory(prefix="search-e2e-") as temporary:
        root = Path(temporary)
        clip = load_model(f"local-dir:{fixture_clip_dir()}")
        write_split(root / "world", get_split("train"), 1000, size=64, progress=False)
        aligner_path = save_aligner(identity_aligner(clip, root / "world" / "train"), root / "identity")
        artifacts = encoder_for_build(clip, root / "world.index", aligner_path)
        Indexer(root / "world.index", artifacts.encoder, settings, artifacts.provenance).run(root / "world" / "train.parquet")
        world = open_index(root / "world.index")
        world.warm()
        image = root / "world" / "train" / "000001.png"
        cases = [("fixture CLIP, 1000 world renders", "text", world, dict(text="red")),
                 ("fixture CLIP, 1000 world renders", "image (path)", world, dict(image=image)),
                 ("fixture CLIP, 1000 world renders", "id", world, dict(id=1)),
                 ("fixture CLIP, 1000 world renders", "text + image − text", world,
                  dict(terms=[Term(text="red"), Term(image=image, weight=0.5), Term(text="striped", weight=-0.5)]))]
        if DEIT_WEIGHTS.exists() and SAMPLE.is_dir():
            deit = load_model("deit_tiny_patch16_224", weights=DEIT_WEIGHTS)
            artifacts = encoder_for_build(deit, root / "photos.index")
            Indexer(root / "photos.index", artifacts.encoder, settings, artifacts.provenance).run(SAMPLE)
            photos = open_index(root / "photos.index", weights=DEIT_WEIGHTS)
            photos.warm()
            photo = sorted(SAMPLE.iterdir())[0]
            cases += [("DeiT-tiny, 800 sample photos", "image (path)", photos, dict(image=photo)),
                      ("DeiT-tiny, 800 sample photos", "id", photos, dict(id=0))]
        for label, kind, index, arguments in cases:
            for _ in range(3):  # warm-up
                index.search(**arguments)
            timings = [index.search(**arguments).seconds for _ in range(repeats)]
            rows.append({"index": label, "query": kind, "images": index.count, **{
                part: statistics.median(t[part] for t in timings) * 1e3 for part in ("encode", "search", "total")}})
            print(rows[-1], flush=True)
    return rows


# -- the report ------------------------------------------------------------------------------------
def mib(count: int) -> str:
    return f"{count / (1 << 20):,.0f} MiB"


def reading(case: dict, target: float = 0.95) -> str:
    """One line per IVF case: the cheapest nprobe reaching the target recall, and the default."""
    auto, sweep = case["auto"], case["auto"]["sweep"]
    enough = [point for point in sweep if point["recall"] >= target]
    cheapest = (f"nprobe {enough[0]['nprobe']} is the fewest reaching recall@10 ≥ {target} "
                f"({enough[0]['recall']:.3f}, p50 {enough[0]['latency_ms']['p50']:.2f} ms)" if enough else
                f"no nprobe up to {sweep[-1]['nprobe']} reaches recall@10 {target} ({sweep[-1]['recall']:.3f} there)")
    chosen = next((point for point in sweep if point["nprobe"] == auto["search_parameters"].get("nprobe")), None)
    default = (f"; the default {chosen['nprobe']} gives {chosen['recall']:.3f} at p50 {chosen['latency_ms']['p50']:.2f} ms"
               if chosen else "")
    return (f"- {case['family']} {case['count']:,} ({auto['factory']}, {mib(auto['file_bytes'])} on disk, "
            f"memory-mapped): {cheapest}{default}.")


def report(raw: dict) -> str:
    spectrum, shape = raw["spectrum"], raw["clustered"]
    real, fitted = spectrum["real_neighbours"], shape["neighbours"]
    lines = [
        "## Search latency and recall (CPU)",
        "",
        f"`{raw['command']}`. Machine: {raw['machine']}. Load average (1 min) {raw['load'][0]:.1f} before, "
        f"{raw['load'][1]:.1f} after (above the core count, other processes shared the cores: latencies are "
        "upper bounds).",
        "",
        f"Synthetic 768-d vectors with the spectrum of real DeiT-tiny z on the {spectrum['real_images']} sample "
        f"photos (normalised; eigenvalues fall as i^-{spectrum['alpha']:.2f} over ranks {FIT_RANKS[0]}–"
        f"{FIT_RANKS[1]}, extended by that power law; ‖mean‖²/Σλ = {spectrum['mean_ratio']:.3f}; participation "
        f"ratio {spectrum['real_participation']:.0f} of {spectrum['real_dim']} dims, "
        f"{spectrum['synthetic_participation']:.0f} of {DIM} extended). Nearest-neighbour cosines (mean top-1 / "
        f"top-10 among 800): photos {real['top1']:.2f} / {real['top10']:.2f}; `gaussian` (no structure beyond "
        f"the covariance) {raw['gaussian_neighbours']['top1']:.2f} / {raw['gaussian_neighbours']['top10']:.2f}; "
        f"`clustered` ({shape['clusters']} clusters holding {shape['between']:.0%} of the variance, fitted to the "
        f"photos) {fitted['top1']:.2f} / {fitted['top10']:.2f}. Queries: "
        f"{raw['cases'][0]['queries'] if raw['cases'] else 0} fresh draws of the same distribution, not in the "
        f"index; recall@{TOP} against Flat. Latency: one query at a time (batch 1, top {TOP}) after a warm-up, on "
        "the index file opened as the search layer opens it (memory-mapped); **default** marks the nprobe the "
        "build recorded (a fixed rule, 0.5·√nlist, until builds tuned it for a target recall: see the FAISS "
        "scale section).",
        "",
        "| vectors | count | index | nprobe | recall@10 | p50 ms | p95 ms | build s (train + add) | file | RSS growth building |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in raw["cases"]:
        flat, auto = case["flat"], case["auto"]
        lines.append(f"| {case['family']} | {case['count']:,} | Flat | – | 1 | {flat['latency_ms']['p50']:.1f} | "
                     f"{flat['latency_ms']['p95']:.1f} | {flat['add_seconds']:.0f} | {mib(flat['file_bytes'])} | "
                     f"{mib(flat['build_rss_bytes'])} |")
        chosen = auto["search_parameters"].get("nprobe")
        for point in auto["sweep"]:
            marker = " **default**" if point["nprobe"] == chosen else ""
            lines.append(
                f"| {case['family']} | {case['count']:,} | {auto['factory']} (auto) | {point['nprobe'] or '–'}{marker} | "
                f"{point['recall']:.3f} | {point['latency_ms']['p50']:.2f} | {point['latency_ms']['p95']:.2f} | "
                f"{auto['train_seconds']:.0f} + {auto['add_seconds']:.0f} | {mib(auto['file_bytes'])} | "
                f"{mib(auto['build_rss_bytes'])} |")
    lines += ["", "Flat's batched search of all queries (the recall ground truth), seconds: " + ", ".join(
        f"{case['family']} {case['count']:,}: {case['flat']['batch_seconds']:.1f}" for case in raw["cases"]) + ".", ""]
    lines += [reading(case) for case in raw["cases"] if "nlist" in case["auto"]]
    lines += ["", "The former default nprobe, `0.5·√nlist` (at least 8), is twice the fewest probes that reached 0.95 on "
              "`clustered` at both sizes. `gaussian` bounds the other side: without any neighbourhood structure "
              "(nearest neighbours barely nearer than anything else), IVF needs half its lists for 0.93 and only Flat "
              "is exact. Real vectors lie between the two (their neighbours are nearer than `gaussian`'s; below the "
              "cluster level `clustered` has no structure left), so recall on a real collection should be checked "
              "with its own queries before lowering nprobe further. Memory: an IVF,Flat index is its file, "
              "memory-mapped (pages read as lists are probed); building it needed the RSS growth shown."]
    if raw.get("end_to_end"):
        lines += [
            "", f"End to end through `SearchIndex.search` (models warm; median of {raw['repeats']} queries; k = 20; "
            "encode = text embedding, or image read + decode + decomposition; search = FAISS, exact rescoring of "
            "combined terms, rows):",
            "", "| index | query | images | encode ms | search ms | total ms |", "|---|---|---|---|---|---|",
        ]
        lines += [f"| {row['index']} | {row['query']} | {row['images']} | {row['encode']:.1f} | {row['search']:.1f} | "
                  f"{row['total']:.1f} |" for row in raw["end_to_end"]]
    return "\n".join(lines)


def measure_all(args: argparse.Namespace) -> dict:
    """Every case asked for, the raw file rewritten after each."""
    from decompose_speed import machine

    if not (DEIT_WEIGHTS.exists() and SAMPLE.is_dir()):
        sys.exit(f"needs {DEIT_WEIGHTS} and {SAMPLE} for the real spectrum")
    load_before = os.getloadavg()[0]
    spectrum = spectrum_model(real_vectors())
    print({key: value for key, value in spectrum.items() if key != "eigenvalues"}, flush=True)
    shape = calibrate(spectrum)
    print(f"clustered: {shape}", flush=True)
    gaussian = {"clusters": 1, "between": 0.0}
    raw = {"command": command_line("benchmarks/search_latency.py"),
           "machine": machine(), "spectrum": spectrum, "clustered": shape, "repeats": args.repeats,
           "gaussian_neighbours": neighbour_cosines(Synthetic(spectrum, 7).sample(spectrum["real_images"])),
           "cases": []}
    nprobes = [int(n) for n in args.nprobes.split(",")]
    for family, sizes, family_shape in (("clustered", args.sizes, shape), ("gaussian", args.gaussian_sizes, gaussian)):
        for count in [int(size) for size in sizes.split(",") if size]:
            raw["cases"].append(scale_case(family, count, spectrum, family_shape, args.queries, args.latency_queries,
                                           args.flat_latency_queries, nprobes))
            args.raw.write_text(json.dumps(raw, indent=1))  # a later failure keeps what was measured
    raw["end_to_end"] = [] if args.skip_end_to_end else end_to_end(args.repeats)
    raw["load"] = [load_before, os.getloadavg()[0]]
    args.raw.write_text(json.dumps(raw, indent=1))
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated sizes of clustered indexes")
    parser.add_argument("--gaussian-sizes", default="100000", help="comma-separated sizes of gaussian indexes ('' for none)")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall")
    parser.add_argument("--latency-queries", type=int, default=200, help="single queries timed per IVF setting")
    parser.add_argument("--flat-latency-queries", type=int, default=30, help="single queries timed against Flat")
    parser.add_argument("--nprobes", default="4,8,16,32,64,128,256,512", help="IVF nprobe values swept")
    parser.add_argument("--repeats", type=int, default=30, help="end-to-end queries timed per case")
    parser.add_argument("--skip-end-to-end", action="store_true")
    raw_options(parser, "search_latency.json")
    args = parser.parse_args()
    report_raw(args, "search-latency", lambda: measure_all(args), report)


if __name__ == "__main__":
    main()
