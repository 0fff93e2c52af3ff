"""Reference-image query cost at batch 1, per model family: the PropertyEncoder (decomposition
+ property vectors, what `search --image` runs) against the model's plain forward (z alone).

Random weights (speed does not depend on them), 2 CPU threads, the two modes interleaved per
repeat and the median taken, so a change of load hits both alike. Target: ≤ 1.2× the plain
forward. Writes its section of benchmarks/RESULTS.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/query_latency.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from compsearch.mapping.decompose import decompose
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.models import load_model
from results_section import write_section

MODELS = ("deit_tiny_patch16_224", "deit_base_patch16_224", "vit_small_patch14_reg4_dinov2.lvd142m",
          "swin_tiny_patch4_window7_224", "maxvit_tiny_tf_224.in1k", "ViT-B-16")


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rows = []
    for name in args.models:
        model = load_model(name, pretrained=False)
        size = model.model.visual.image_size if model.is_clip else model.model.pretrained_cfg["input_size"][1:]
        image = torch.randn(1, 3, *((size, size) if isinstance(size, int) else size))
        names = decompose(model.model, image, model_name=model.name).names  # also warms the adapter up
        encoder = PropertyEncoder(model, properties={"p": names[1:4]})
        encoder.encode(image)
        model.encode_images(image)
        plain, query = [], []
        for _ in range(args.repeats):
            plain.append(timed(lambda: model.encode_images(image)))
            query.append(timed(lambda: encoder.encode(image)))
        rows.append((name, tuple(image.shape[-2:]), statistics.median(plain) * 1e3, statistics.median(query) * 1e3))
        print(f"{name}: plain {rows[-1][2]:.1f} ms, image query {rows[-1][3]:.1f} ms "
              f"({rows[-1][3] / rows[-1][2]:.2f}×)", flush=True)
    lines = ["## Reference-image query cost at batch 1, per family (CPU)", "",
             f"`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/query_latency.py` — random weights, {args.repeats} "
             "interleaved repeats, medians; query = `PropertyEncoder.encode` (decomposition from the default first "
             "block, `full` + one 3-component property), plain = the model's own z. Target ≤ 1.2×.", "",
             "| model | input | plain ms | image query ms | query / plain |", "|---|---|---:|---:|---:|",
             *[f"| {n} | {s[0]}×{s[1]} | {p:.1f} | {q:.1f} | {q / p:.2f}× |" for n, s, p, q in rows]]
    write_section("query-latency", "\n".join(lines))


if __name__ == "__main__":
    main()
