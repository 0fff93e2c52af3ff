"""The component store written beside an index, and properties added from it without the ViT.

Side by side in one process, on the sample photos with real DeiT-tiny weights (model space,
a planted ranking of four properties, k = 4; decoding in the main process):

1. ``compsearch index`` of the photos with property ``a`` under ``--store none`` and
   ``--store fp16``, interleaved (none, fp16, none, fp16), FAISS build included: the store's
   share of indexing time is (fp16 − none) / fp16 of the medians;
2. the store's bytes per image on disk (its Parquet parts) beside the shards' and the raw
   layout's;
3. ``add-property`` of ``b``, ``c``, ``d`` one at a time on the fp16 index (the model's
   weights loaded once, no image read): seconds against a fresh index of the same images,
   both scaled to 10k images (measured on --images photos, linear in the images).

    .venv/bin/python benchmarks/living_index.py --images 160
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.relearn import add_properties
from compsearch.indexer.store import IndexStore
from compsearch.mapping.decompose import decompose
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.rank import PropertyRanking, Ranking

sys.path.insert(0, str(Path(__file__).parent))
from results_section import DEIT_WEIGHTS, SHARED, publish, shared_cpu  # noqa: E402

PHOTOS = SHARED / "data" / "imagenet-sample"
PROPERTIES = ("a", "b", "c", "d")


def planted_ranking(model: LoadedModel, path: Path) -> Path:
    """Four model-space properties on disjoint components (their choice does not change the cost)."""
    names = decompose(model.model, torch.zeros(1, 3, 224, 224), model_name=model.name).names
    properties = []
    for i, name in enumerate(PROPERTIES):
        top = names[4 * i:4 * i + 4]
        properties.append(PropertyRanking(name=name, source="examples", values=["x", "y"],
                                          components=top + [n for n in names if n not in top],
                                          scores=[1.0] * len(names), own_scores=[1.0] * len(names), k=4))
    return Ranking(model.name, model.weights_id, None, None, None, 0, properties).save(path)


def index(model: LoadedModel, photos: Path, out: Path, ranking: Path, store: str | None, batch: int) -> float:
    built = encoder_for_build(model, out, None, ranking, ["a"])
    settings = IndexSettings(batch_size=batch, workers=0, chunk_size=64, progress=False, store=store)
    started = time.perf_counter()
    Indexer(out, built.encoder, settings, built.provenance).run(photos, mode="overwrite")
    return time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    started = time.perf_counter()
    model = load_model("deit_tiny_patch16_224", weights=DEIT_WEIGHTS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        listing = root / "photos.txt"
        files = sorted(PHOTOS.iterdir())[:args.images]
        listing.write_text("".join(f"{path}\n" for path in files))
        ranking = planted_ranking(model, root / "ranking.json")
        seconds: dict[str, list[float]] = {"none": [], "fp16": []}
        for store in ("none", "fp16", "none", "fp16"):
            seconds[store].append(index(model, listing, root / store, ranking, None if store == "none" else store,
                                        args.batch_size))
            print(store, f"{seconds[store][-1]:.1f} s", flush=True)
        none, fp16 = (statistics.median(seconds[store]) for store in ("none", "fp16"))
        folder = root / "fp16"
        images = IndexStore(folder).read_manifest().counts.images
        layout = IndexStore(folder).read_manifest().store.layout
        store_bytes, shard_bytes = folder_bytes(folder / "store"), folder_bytes(folder / "shards")
        added = []
        for name in PROPERTIES[1:]:
            begun = time.perf_counter()
            add_properties(folder, [name], ranking, model=model)
            added.append(time.perf_counter() - begun)
            print("add-property", name, f"{added[-1]:.2f} s", flush=True)
    add = statistics.median(added)
    per_10k = 10_000 / images
    publish("living-index", [
        "## Living index: the component store's cost and add-property against re-indexing (CPU)",
        "",
        f"`.venv/bin/python benchmarks/living_index.py --images {args.images}` ({shared_cpu()}; "
        f"{time.perf_counter() - started:.0f} s)",
        "",
        f"DeiT-tiny (real weights), {images} ImageNet sample photos (JPEG), model space, batch {args.batch_size}, "
        "decoding in the main process; FAISS build included. Figures per 10k images are the measured ones "
        "scaled linearly (every stage streams shard by shard).",
        "",
        "| | seconds (median) | per 10k images |",
        "|---|---|---|",
        f"| `index --store none` (2 runs, interleaved) | {none:.1f} | {none * per_10k / 60:.1f} min |",
        f"| `index --store fp16` (2 runs) | {fp16:.1f} | {fp16 * per_10k / 60:.1f} min |",
        f"| `add-property` (one property, 3 runs, weights already loaded) | {add:.2f} | {add * per_10k:.0f} s |",
        "",
        f"- store's share of indexing time: (fp16 − none) / fp16 = {(fp16 - none) / fp16:+.1%} (target ≤ 5 %; "
        f"runs: none {', '.join(f'{s:.1f}' for s in seconds['none'])} s, fp16 "
        f"{', '.join(f'{s:.1f}' for s in seconds['fp16'])} s)",
        f"- add-property against re-indexing the same images: {fp16 / add:.0f}× faster (target ≥ 20×)",
        f"- store bytes per image on disk (Parquet parts): {store_bytes / images:,.0f} "
        f"(layout: {layout['values_per_image']:,} fp16 values + {layout['scalars_per_image']} fp32 scalars = "
        f"{layout['bytes_per_image']:,} B raw); the shards (metadata + 2 fp16 vectors of 192): "
        f"{shard_bytes / images:,.0f} B per image",
    ])


if __name__ == "__main__":
    main()
