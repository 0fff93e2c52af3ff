"""Updating an index after 1 % of its folder changed, against rebuilding it (issue 16, item 6).

Side by side in one process, with real DeiT-tiny weights (model space, one planted property
plus ``full``, the component store at fp16 as by default; decoding in the main process):

1. N photos are made in a temporary folder (never the repository): crops of the 800 sample
   photos, each variant its own crop and JPEG re-encoding, so every file has its own bytes;
2. ``compsearch index FOLDER --out DIR`` builds the index (timed, for scale);
3. 1 % of the files change, a quarter each: new files added, files deleted, files moved to
   another folder (same bytes) and files edited in place (new bytes, same path);
4. the same command again updates the index (timed; the plan alone timed too), then a full
   rebuild of the changed folder into another directory (timed); both must hold the same files.

    .venv/bin/python benchmarks/living_update.py --images 10000
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, IndexSummary, Indexer
from compsearch.indexer.integrity import full_check
from compsearch.indexer.store import IndexStore
from compsearch.indexer.sync import plan_sync
from compsearch.mapping.images import open_source
from compsearch.mapping.models import LoadedModel, load_model

sys.path.insert(0, str(Path(__file__).parent))
from living_index import PHOTOS, planted_ranking  # noqa: E402
from results_section import DEIT_WEIGHTS, publish, shared_cpu  # noqa: E402

SHORT_SIDE = 256  # variants are resized to this (decoding cost like a thumbnail-sized photo)
KINDS = ("added", "removed", "moved", "changed")


def variant(photos: list[Path], number: int, path: Path) -> None:
    """Variant ``number``: a crop (60–100 % of each side, anywhere) of a sample photo, resized and
    re-encoded as JPEG — bytes of its own, however many variants share a photo."""
    draw = random.Random(number)
    with PIL.Image.open(photos[number % len(photos)]) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    crop_w, crop_h = int(width * draw.uniform(0.6, 1.0)), int(height * draw.uniform(0.6, 1.0))
    left, top = draw.randint(0, width - crop_w), draw.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    scale = SHORT_SIDE / min(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=draw.randint(85, 95))


def make_folder(folder: Path, count: int) -> list[Path]:
    photos = sorted(PHOTOS.iterdir())
    files = [folder / f"{number // 1000:03d}" / f"{number:06d}.jpg" for number in range(count)]
    for number, path in enumerate(files):
        variant(photos, number, path)
    return files


def change(files: list[Path], folder: Path, share: float, seed: int = 0) -> dict[str, int]:
    """Change ``share`` of ``files``: a quarter each added, removed, moved, edited (see the module)."""
    photos = sorted(PHOTOS.iterdir())
    per_kind = max(1, round(len(files) * share / len(KINDS)))
    chosen = random.Random(seed).sample(files, 3 * per_kind)
    removed, moved, edited = chosen[:per_kind], chosen[per_kind:2 * per_kind], chosen[2 * per_kind:]
    for offset in range(per_kind):
        variant(photos, len(files) + offset, folder / "new" / f"{len(files) + offset:06d}.jpg")
    for path in removed:
        path.unlink()
    (folder / "moved").mkdir()
    for path in moved:
        path.rename(folder / "moved" / path.name)  # same bytes, another folder
    for offset, path in enumerate(edited):
        variant(photos, 2 * len(files) + offset, path)  # another crop: new bytes, same path
    return dict.fromkeys(KINDS, per_kind)


def run(model: LoadedModel, folder: Path, out: Path, ranking: Path, settings: IndexSettings,
        mode: str = "resume") -> tuple[float, IndexSummary]:
    built = encoder_for_build(model, out, None, ranking, ["a"])
    started = time.perf_counter()
    summary = Indexer(out, built.encoder, settings, built.provenance).run(folder, mode)
    return time.perf_counter() - started, summary


def held(out: Path) -> set[str]:
    return set(IndexStore(out).read_table(columns=["path"]).column("path").to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.01, help="share of the files changed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()
    started = time.perf_counter()
    model = load_model("deit_tiny_patch16_224", weights=DEIT_WEIGHTS)
    settings = IndexSettings(batch_size=args.batch_size, workers=0, chunk_size=args.chunk_size, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "photos"
        begun = time.perf_counter()
        files = make_folder(folder, args.images)
        print(f"{len(files)} variants written in {time.perf_counter() - begun:.0f} s", flush=True)
        ranking = planted_ranking(model, root / "ranking.json")
        build, _ = run(model, folder, root / "index", ranking, settings)
        print(f"build {build:.1f} s", flush=True)
        made = change(files, folder, args.share)
        begun = time.perf_counter()
        plan = plan_sync(open_source(folder), IndexStore(root / "index"))
        planning = time.perf_counter() - begun
        update, summary = run(model, folder, root / "index", ranking, settings)
        print(f"update {update:.1f} s (plan {planning:.2f} s)", flush=True)
        rebuild, fresh = run(model, folder, root / "rebuilt", ranking, settings, mode="overwrite")
        print(f"rebuild {rebuild:.1f} s", flush=True)
        found = {"added": summary.added, "removed": summary.removed, "moved": summary.moved, "changed": summary.changed}
        assert found == made and plan.counts()["removed"] == made["removed"], (found, made)
        assert held(root / "index") == held(root / "rebuilt") and summary.images == fresh.images
        assert full_check(root / "index").damage == []
        images = summary.images
    publish("living-update", [
        "## Living index: updating after 1 % of the folder changed, against rebuilding it (CPU)",
        "",
        f"`.venv/bin/python benchmarks/living_update.py {' '.join(sys.argv[1:])}` ({shared_cpu()}; "
        f"{time.perf_counter() - started:.0f} s)",
        "",
        f"DeiT-tiny (real weights), {args.images} JPEG variants of the ImageNet sample photos (crops, short side "
        f"{SHORT_SIDE} px, each its own bytes), model space, one property + `full`, component store fp16, batch "
        f"{args.batch_size}, chunks of {args.chunk_size}, decoding in the main process; FAISS build included. "
        f"Changed: {', '.join(f'{count} {kind}' for kind, count in made.items())} ({args.share:.0%} of the files).",
        "",
        "| | seconds |",
        "|---|---|",
        f"| first build of the {args.images} files | {build:.1f} |",
        f"| rerun of the same command: the update ({images} images after it) | {update:.1f} |",
        f"| … of which the plan (listing, stats, hashing the move candidates) | {planning:.2f} |",
        f"| full rebuild of the changed folder (`--overwrite`) | {rebuild:.1f} |",
        "",
        f"- update against rebuild: {rebuild / update:.1f}× faster; the update encoded "
        f"{made['added'] + made['changed']} images, the rebuild {fresh.added}; both hold the same "
        f"{images} files, and `compsearch verify` passes after the update",
    ])


if __name__ == "__main__":
    main()
