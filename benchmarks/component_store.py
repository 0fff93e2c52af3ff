"""What the component store costs: bytes per image per reference family, its exactness on real
weights and photos, and its time beside the decomposition (CPU).

1. Size: each reference model built from its real config with random weights (the sizes
   depend on the architecture only), one image at its input size, the default decomposed
   range; the store's bytes per image (fp16 arrays, fp32 scalars) against all components in
   z-space and in CLIP space (n × 768, DESIGN.md's d_clip), and against one property vector.
2. Exactness: real DeiT-tiny weights on real photos (skipped without /work/shared): the
   worst per-component ‖expand(store) − c_i‖ / ‖c_i‖ with fp32 and with fp16 storage.
3. Time: plain forward, decompose, decompose + store (fp16 rows, flattened) and expand of the
   fp16 rows, interleaved round-robin on the same batch, median of the repeats.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/component_store.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from compsearch.mapping.decompose import decompose, expand
from compsearch.mapping.models import LoadedModel, load_model
from results_section import publish, shared_cpu

SECTION = "component-store"
D_CLIP = 768  # DESIGN.md §4: the reference CLIP space (ViT-L-14)
PROPERTY_VECTOR_BYTES = D_CLIP * 4  # one property vector as a Flat FAISS index holds it (fp32)
FAMILIES = (  # the reference models
    ("deit_base_patch16_224", "ViT-B/16 (DeiT-base)"),
    ("vit_base_patch14_dinov2.lvd142m", "DINOv2-B, 518 px"),
    ("swin_base_patch4_window7_224", "Swin-B"),
    ("maxvit_small_tf_224", "MaxViT-S"),
    ("ViT-B-16", "CLIP ViT-B-16"),
)
SHARED = Path(__file__).resolve().parents[2] / "shared"  # beside the checkout, as the other benchmarks find it
REAL_WEIGHTS = SHARED / "models" / "deit_tiny_patch16_224.in1k.safetensors"
PHOTOS = SHARED / "data" / "imagenet-sample"
TIMED = (("deit_tiny_patch16_224", 32), ("swin_tiny_patch4_window7_224", 8))


def input_size(loaded: LoadedModel) -> tuple[int, ...]:
    cfg = getattr(loaded.model, "pretrained_cfg", None)
    if cfg:
        return tuple(cfg["input_size"])
    size = loaded.model.visual.image_size
    return (3, *(size if isinstance(size, tuple) else (size, size)))


def size_rows() -> list[str]:
    rows = ["| model | decomposed | components × z dim | stored per image (fp16 + fp32 scalars) | bytes | "
            "all c_i in z-space, fp16 | all c_i in CLIP space (n × 768, fp16) | store ÷ CLIP-space c_i | "
            "store in property vectors (768 fp32) |", "|---" * 9 + "|"]
    for name, label in FAMILIES:
        loaded = load_model(name, pretrained=False)
        decomposition = decompose(loaded.model, torch.randn(1, *input_size(loaded)), store=True)
        layout = decomposition.stored.to("fp16").layout()
        count, dim = decomposition.contributions.shape[1:]
        clip_bytes = count * D_CLIP * 2
        rows.append(
            f"| {label} (`{name}`) | from {layout['first_block']} | {count} × {dim} | "
            f"{layout['values_per_image']:,} + {layout['scalars_per_image']} | {layout['bytes_per_image']:,} | "
            f"{count * dim * 2:,} | {clip_bytes:,} | {layout['bytes_per_image'] / clip_bytes:.3f} | "
            f"{layout['bytes_per_image'] / PROPERTY_VECTOR_BYTES:.1f} |"
        )
        print(rows[-1], flush=True)
        del loaded, decomposition
    return rows


def exactness_lines(count: int) -> list[str]:
    if not REAL_WEIGHTS.exists() or not PHOTOS.is_dir():
        return [f"- exactness on real weights skipped: {REAL_WEIGHTS} or {PHOTOS} is absent"]
    loaded = load_model("deit_tiny_patch16_224", weights=REAL_WEIGHTS)
    files = sorted(PHOTOS.iterdir())[:count]
    images = torch.stack([loaded.preprocess(Image.open(path).convert("RGB")) for path in files])
    lines = []
    for first_block in (None, "all"):
        decomposition = decompose(loaded.model, images, first_block, store=True)
        reference = decomposition.contributions.double()
        errors = {}
        for dtype in ("fp32", "fp16"):
            expanded = expand(decomposition.stored.to(dtype), loaded.model).double()
            errors[dtype] = ((expanded - reference).norm(dim=-1) / reference.norm(dim=-1)).max().item()
        lines.append(f"- DeiT-tiny (real weights), {len(files)} photos, {first_block or 'default range'}: worst "
                     f"component ‖expand − c_i‖ / ‖c_i‖ = {errors['fp32']:.1e} (fp32 rows), "
                     f"{errors['fp16']:.1e} (fp16 rows)")
    return lines


def median_seconds(modes: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for run in modes.values():  # warm-up: allocator, kernels, cached slot maps
        run()
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, run in modes.items():
            started = time.perf_counter()
            run()
            samples[mode].append(time.perf_counter() - started)
    return {mode: statistics.median(values) for mode, values in samples.items()}


def time_rows(repeats: int) -> list[str]:
    rows = ["| model | batch | forward img/s | decompose img/s | decompose + store img/s | expand img/s | "
            "decompose / forward | store / decompose | expand / decompose |", "|---" * 9 + "|"]
    for name, batch_size in TIMED:
        loaded = load_model(name, pretrained=False)
        model, batch = loaded.model, torch.randn(batch_size, *input_size(loaded))
        stored = decompose(model, batch, store=True).stored.to("fp16")

        def store_rows() -> None:
            decompose(model, batch, store=True).stored.to("fp16").flat()

        with torch.inference_mode():
            seconds = median_seconds({
                "forward": lambda: loaded.encode_images(batch),
                "decompose": lambda: decompose(model, batch),
                "store": store_rows,
                "expand": lambda: expand(stored, model),
            }, repeats)
        rate = {mode: batch_size / value for mode, value in seconds.items()}
        rows.append(f"| {name} | {batch_size} | {rate['forward']:.1f} | {rate['decompose']:.1f} | {rate['store']:.1f} "
                    f"| {rate['expand']:.0f} | {seconds['decompose'] / seconds['forward']:.2f} "
                    f"| {seconds['store'] / seconds['decompose']:.3f} "
                    f"| {seconds['expand'] / seconds['decompose']:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (median reported)")
    parser.add_argument("--photos", type=int, default=32, help="real photos for the exactness check")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    sizes = size_rows()
    exactness = exactness_lines(args.photos)
    times = time_rows(args.repeats)
    lines = [
        "## Component store: bytes per image, exactness, time (CPU)",
        "",
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python benchmarks/component_store.py` "
        f"({shared_cpu()}; {time.perf_counter() - started:.0f} s; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after)",
        "",
        "Bytes per image of the store (`mapping/decompose/store.py`: per head its head_dim vector, or per "
        "readout slot for Swin; MLP / conv / init in the residual stream; per-image scalars in fp32) for each "
        "reference family's default range, random weights (sizes depend on the architecture only):",
        "",
        *sizes,
        "",
        *exactness,
        "",
        f"Time on random weights, {args.repeats} interleaved repeats after a warm-up, median; *decompose + store* "
        "keeps the fp16 rows flattened for writing, *expand* rebuilds every component from them (no image "
        "model pass):",
        "",
        *times,
    ]
    if args.no_write:
        print("\n".join(lines))
    else:
        publish(SECTION, lines)


if __name__ == "__main__":
    main()
