"""Property search on real photos, through the offline path: `rank --examples` → `index --ranking`.

Real photos from the ImageNet sample (one photo per class) get controlled edits whose values
are known and do not depend on the object: the colour tint of the luminance, the position in
the frame (the photo shrunk onto a grey canvas), blur, a texture overlay and the crop's
aspect (a strip stretched to a square). Every edited image draws each edit's value at random
(balanced), so the edits vary independently of each other and of the photo.

1. Ranking: photos of one part, two edited copies each, laid out as labelled folders per
   value (links to the same files), ranked by `compsearch rank --examples … --k auto` with
   DeiT-tiny's real weights in its own space (no aligner, no CLIP).
2. Gallery: photos of another part, three edited copies each, indexed by `compsearch index
   --ranking` (a Parquet listing carries the labels as metadata).
3. Queries: a fresh edited copy of some gallery photos (not indexed), by image, through each
   edit's index and through `full` (`search.SearchIndex.search_batch`, the code `compsearch
   search` runs; one query is also run through the CLI and must agree).

Per edit: P@10 on the edit's value (chance: the gallery's share of that value), leakage
into the other edits (results sharing the query's value of another edit, over chance) and
into the object (results that are copies of the query's own photo — its ImageNet class, as
the sample has one photo per class — over chance), and the ranking's component scores.
Writes its section of benchmarks/RESULTS.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/real_properties.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageChops
import PIL.ImageFilter
import PIL.ImageOps
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from compsearch.mapping.rank import Ranking
from compsearch.mapping.rank.retrieval import match_excess, match_rate
from results_section import publish, shared_cpu

SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTOS = SHARED / "data" / "imagenet-sample"
WEIGHTS = SHARED / "models" / "deit_tiny_patch16_224.in1k.safetensors"
MODEL = "deit_tiny_patch16_224"
SIDE = 224
TOP = 10
REFERENCE_K = 3  # DeiT's reference k (mapping/rank/topk.yaml)
REFERENCE_SUFFIX = f"_k{REFERENCE_K}"

EDITS: dict[str, tuple[str, ...]] = {
    "tint": ("grey", "red", "green", "blue"),
    "position": ("left", "right", "top", "bottom"),
    "blur": ("sharp", "soft", "blurred"),
    "texture": ("none", "stripes", "dots", "checks"),
    "aspect": ("wide", "square", "tall"),
}
TINTS = {"grey": (255, 255, 255), "red": (255, 70, 60), "green": (70, 235, 80), "blue": (80, 110, 255)}
BLUR_RADIUS = {"sharp": 0, "soft": 2, "blurred": 5}
CANVAS_GREY = (128, 128, 128)


def _crop(photo: PIL.Image.Image, aspect: str) -> PIL.Image.Image:
    """A centred strip of the photo's square (half its height, or half its width) or the
    square itself, stretched to SIDE × SIDE: the aspect changes the object's proportions."""
    square = PIL.ImageOps.fit(photo, (SIDE * 2, SIDE * 2))
    box = {"wide": (0, SIDE // 2, SIDE * 2, SIDE * 3 // 2), "tall": (SIDE // 2, 0, SIDE * 3 // 2, SIDE * 2),
           "square": (0, 0, SIDE * 2, SIDE * 2)}[aspect]
    return square.crop(box).resize((SIDE, SIDE), PIL.Image.BICUBIC)


def _texture(kind: str) -> PIL.Image.Image | None:
    """A black-on-white pattern to multiply over the photo (None: no overlay)."""
    if kind == "none":
        return None
    y, x = np.mgrid[:SIDE, :SIDE]
    dark = {"stripes": (y // 8) % 2 == 0,
            "dots": ((x % 16 - 8) ** 2 + (y % 16 - 8) ** 2) < 16,
            "checks": ((x // 16) + (y // 16)) % 2 == 0}[kind]
    return PIL.Image.fromarray(np.where(dark, 110, 255).astype(np.uint8)).convert("RGB")


def edit(photo: PIL.Image.Image, values: dict[str, str]) -> PIL.Image.Image:
    """Apply the edits in a fixed order: aspect, blur, tint, texture, position."""
    image = _crop(photo, values["aspect"])
    if BLUR_RADIUS[values["blur"]]:
        image = image.filter(PIL.ImageFilter.GaussianBlur(BLUR_RADIUS[values["blur"]]))
    image = PIL.ImageOps.colorize(image.convert("L"), black=(0, 0, 0), white=TINTS[values["tint"]])
    overlay = _texture(values["texture"])
    if overlay is not None:
        image = PIL.ImageChops.multiply(image, overlay)
    small = image.resize((SIDE // 2, SIDE // 2), PIL.Image.BICUBIC)
    canvas = PIL.Image.new("RGB", (SIDE, SIDE), CANVAS_GREY)
    quarter, half = SIDE // 4, SIDE // 2
    corner = {"left": (0, quarter), "right": (half, quarter), "top": (quarter, 0), "bottom": (quarter, half)}
    canvas.paste(small, corner[values["position"]])
    return canvas


def balanced_values(count: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """``count`` draws of every edit, each value equally often (±1), independent across edits."""
    columns = {name: rng.permutation(np.resize(np.array(values), count)) for name, values in EDITS.items()}
    return [{name: str(column[i]) for name, column in columns.items()} for i in range(count)]


def write_set(photos: list[Path], copies: int, folder: Path, rng: np.random.Generator) -> list[dict]:
    """``copies`` edited JPEGs of each photo in ``folder``; one row per image (path, source, edits)."""
    folder.mkdir(parents=True, exist_ok=True)
    draws = iter(balanced_values(len(photos) * copies, rng))
    rows = []
    for photo in photos:
        with PIL.Image.open(photo) as opened:
            source = opened.convert("RGB")
        for copy in range(copies):
            values = next(draws)
            path = folder / f"{photo.stem}-{copy}.jpg"
            edit(source, values).save(path, quality=92)
            rows.append({"path": str(path), "source": photo.stem, **values})
    return rows


def example_folders(rows: list[dict], root: Path) -> list[Path]:
    """Per edit, ``root/EDIT/VALUE/`` links to the ranking images: labelled folders."""
    for row in rows:
        for name in EDITS:
            folder = root / name / row[name]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / Path(row["path"]).name).symlink_to(row["path"])
    return [root / name for name in EDITS]


def compsearch(*args: str) -> tuple[str, float]:
    """Run the CLI as a user would; its output and wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from compsearch.search.launch import main; main()", *args],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"compsearch {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout, time.perf_counter() - started


def codes(values: list[str]) -> torch.Tensor:
    vocabulary = sorted(set(values))
    return torch.tensor([vocabulary.index(value) for value in values])


def measure(index, queries: list[dict], gallery: list[dict]) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """Image queries through every edit's index and ``full`` in one batch (each query image is
    decomposed once): per index searched, per factor (edits and ``source``), the share of
    results sharing the query's value and that share over chance."""
    from compsearch.search.query import Query

    row_of = {row["path"]: position for position, row in enumerate(gallery)}
    searched = [*EDITS, *(f"{name}{REFERENCE_SUFFIX}" for name in EDITS), "full"]
    answers = index.search_batch([Query(image=q["path"], property=p) for p in searched for q in queries], k=TOP)
    figures = {}
    for position, name in enumerate(searched):
        found = answers[position * len(queries):(position + 1) * len(queries)]
        results = torch.tensor([[row_of[r.path] for r in answer.results] for answer in found])
        figures[name] = {}
        for factor in [*EDITS, "source"]:
            labels = codes([row[factor] for row in gallery] + [q[factor] for q in queries])
            gallery_labels, query_labels = labels[:len(gallery)], labels[len(gallery):]
            figures[name][factor] = (match_rate(results, query_labels, gallery_labels),
                                     match_excess(results, query_labels, gallery_labels))
    return figures


def with_reference_k(ranking: Ranking) -> Ranking:
    """``ranking`` plus, per edit, the same components summed to the family's reference k
    (``EDIT_k3``): one index pass builds both, so auto k is compared with the fixed one."""
    fixed = [replace(prop, name=f"{prop.name}{REFERENCE_SUFFIX}", k=REFERENCE_K, k_curve=None)
             for prop in ranking.properties]
    return replace(ranking, properties=[*ranking.properties, *fixed])


CARRIED, WEAK = 0.10, 0.03  # the best component's ω² above which an edit counts as carried, weakly carried


def verdict(ranking: Ranking, figures: dict) -> str:
    """Which edits DeiT-tiny carries, by the best component's ω² (and whether the edit's own
    index then retrieves it better than ``full``)."""
    groups: dict[str, list[str]] = {"carries": [], "weakly": [], "not": []}
    for prop in ranking.properties:
        best = max(prop.own_scores)
        group = "carries" if best >= CARRIED else "weakly" if best >= WEAK else "not"
        beats = figures[prop.name][prop.name][0] > figures["full"][prop.name][0]
        groups[group].append(f"{prop.name} (best ω² {best:.2f}; P@10 {'above' if beats else 'not above'} full)")
    return (f"DeiT-tiny carries (a component with ω² ≥ {CARRIED}): {', '.join(groups['carries']) or 'none'}; "
            f"weakly (≥ {WEAK}): {', '.join(groups['weakly']) or 'none'}; not at all: "
            f"{', '.join(groups['not']) or 'none'}. Where two edits share their best components (ω² of both high "
            "on the same head), an edit's index cannot leave the other out: compare the leakage columns.")


def component_lines(ranking: Ranking) -> list[str]:
    rows = ["| edit | values | k (auto) | top components (ω²; the first 5) | best ω² of the other components | "
            "held-out P@10 over chance at k: own / leakage |", "|---|---:|---:|---|---:|---|"]
    for prop in ranking.properties:
        top = ", ".join(f"{c} {own:.2f}" for c, own in zip(prop.components[:5], prop.own_scores[:5]))
        top += ", …" if prop.k > 5 else ""
        rest = max(prop.own_scores[prop.k:], default=0.0)
        curve = prop.k_curve
        at_k = f"{curve.own[prop.k - 1]:+.2f} / {curve.leakage[prop.k - 1]:+.2f}" if curve else "–"
        rows.append(f"| {prop.name} | {len(prop.values)} | {prop.k} | {top} | {rest:.2f} | {at_k} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank-photos", type=int, default=150, help="photos ranked on (2 edited copies each)")
    parser.add_argument("--gallery-photos", type=int, default=100, help="photos indexed (3 edited copies each)")
    parser.add_argument("--queries", type=int, default=60, help="gallery photos queried by a fresh edited copy")
    parser.add_argument("--workdir", type=Path, help="where images, ranking and index go (default: a temporary folder)")
    args = parser.parse_args()
    if not WEIGHTS.is_file() or not PHOTOS.is_dir():
        raise SystemExit(f"needs {PHOTOS} and {WEIGHTS} (the shared sample photos and DeiT-tiny's weights)")
    load_before = os.getloadavg()
    started = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="compsearch-real-"))
    rng = np.random.default_rng(0)
    photos = [PHOTOS / name for name in rng.permutation(sorted(p.name for p in PHOTOS.glob("*.JPEG")))]
    ranked_photos = photos[:args.rank_photos]
    gallery_photos = photos[args.rank_photos:args.rank_photos + args.gallery_photos]
    rank_rows = write_set(ranked_photos, 2, work / "rank", rng)
    gallery = write_set(gallery_photos, 3, work / "gallery", rng)
    queries = write_set(gallery_photos[:args.queries], 1, work / "queries", rng)
    pq.write_table(pa.Table.from_pylist(gallery), work / "gallery.parquet")
    folders = example_folders(rank_rows, work / "examples")
    edited = time.perf_counter() - started

    model = ["--model", MODEL, "--weights", str(WEIGHTS), "--device", "cpu"]
    ranked_out, rank_seconds = compsearch(
        "rank", *model, *[arg for folder in folders for arg in ("--examples", str(folder))], "--k", "auto",
        "--out", str(work / "ranking.json"))
    print(ranked_out, flush=True)
    ranking = Ranking.load(work / "ranking.json")
    with_reference_k(ranking).save(work / "indexed.json")
    _, index_seconds = compsearch("index", str(work / "gallery.parquet"), "--out", str(work / "gallery.index"),
                                  *model, "--ranking", str(work / "indexed.json"), "--workers", "0")

    from compsearch.search.index import SearchIndex

    query_started = time.perf_counter()
    index = SearchIndex(work / "gallery.index")
    figures = measure(index, queries, gallery)
    query_seconds = time.perf_counter() - query_started
    cli_out, _ = compsearch("search", str(work / "gallery.index"), "--image", queries[0]["path"],
                            "--property", "tint", "-k", str(TOP), "--json")
    api = [r.path for r in index.search(image=queries[0]["path"], property="tint", k=TOP).results]
    cli_agrees = [r["path"] for r in json.loads(cli_out)["results"]] == api

    rows = [f"| edit | P@10 edit index (auto k) | P@10 k={REFERENCE_K} | P@10 full | chance | leakage into the other "
            "edits over chance: edit index (full) | same photo: edit index, full |", "|---|---:|---:|---:|---:|---|---|"]
    for name in EDITS:
        own, fixed, full = figures[name], figures[f"{name}{REFERENCE_SUFFIX}"], figures["full"]
        chance = own[name][0] - own[name][1]
        others = ", ".join(f"{other} {own[other][1]:+.2f} ({full[other][1]:+.2f})" for other in EDITS if other != name)
        rows.append(f"| {name} | {own[name][0]:.2f} | {fixed[name][0]:.2f} | {full[name][0]:.2f} | {chance:.2f} | "
                    f"{others} | {own['source'][0]:.2f}, {full['source'][0]:.2f} |")
    load_after = os.getloadavg()
    lines = [
        "## Property search on real photos (DeiT-tiny, offline: rank --examples → index --ranking)", "",
        "`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/real_properties.py` — "
        f"{len(ranked_photos)} ImageNet-sample photos × 2 edited copies ranked on ({len(rank_rows)} example "
        f"images, `rank --examples` per edit, `--k auto`), {len(gallery_photos)} other photos × 3 copies indexed "
        f"({len(gallery)} images, `index --ranking` with each edit at its auto k and at k={REFERENCE_K}, Flat), "
        f"{len(queries)} image queries (a fresh copy of a gallery "
        f"photo, not indexed). Model {MODEL} with its real ImageNet weights, in its own space (no aligner).", "",
        f"Edits (drawn independently, balanced): " + "; ".join(f"{n}: {', '.join(v)}" for n, v in EDITS.items())
        + ". Same photo = results that are copies of the query's photo (chance 3 of "
        f"{len(gallery)}; the sample has one photo per ImageNet class, so this is also the object's class).", "",
        *rows, "",
        "Component scores (ω², chance-corrected share of the component's variance the edit's values explain, on "
        "the ranking images) and the k `--k auto` chose:", "",
        *component_lines(ranking), "",
        verdict(ranking, figures), "",
        f"Time: editing {edited:.0f} s, `rank` {rank_seconds:.0f} s, `index` {index_seconds:.0f} s, "
        f"queries {query_seconds:.0f} s (total {time.perf_counter() - started:.0f} s); the CLI's `search` "
        f"{'agrees with' if cli_agrees else 'DIFFERS from'} the API on a query. {shared_cpu()}; load average "
        f"{load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end (other helpers' jobs share the CPU, "
        "so the times are slower than a quiet machine's).",
    ]
    publish("real-properties", lines)


if __name__ == "__main__":
    main()
