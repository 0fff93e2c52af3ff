"""Property search quality end to end: the real index + search path on the world.

Runs `compsearch demo`'s flow (world renders, shipped fixture CLIP, ranking, `index`, then
queries through `search.SearchIndex`) for the fixture CLIP decomposing itself and, when its
weights are at hand, DeiT-tiny aligned to the fixture. Per property and query kind: P@10 and
mAP over the whole collection's ranking (relevant = same value of the queried factor), through
the property's index and through `full`, and leakage (agreement over chance on the factors the
query did not ask for). Writes its section of benchmarks/RESULTS.md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/search_quality.py
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from results_section import DEIT_WEIGHTS, write_section
from compsearch.search.demo import run_demo


def table(report) -> list[str]:
    rows = ["| property | query | P@10 property index | P@10 full | mAP property index | mAP full | leak property | leak full |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for f in report.figures:
        leak = ("–", "–") if f.leakage_property_index is None else (f"{f.leakage_property_index:+.2f}",
                                                                   f"{f.leakage_full_index:+.2f}")
        rows.append(f"| {f.property} | {f.kind} | {f.precision_property_index:.2f} | {f.precision_full_index:.2f} | "
                    f"{f.map_property_index:.2f} | {f.map_full_index:.2f} | {leak[0]} | {leak[1]} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, help="where the demo's artifacts are kept (default: a new temporary "
                        "folder, so the stage times are a first run's)")
    args = parser.parse_args()
    choices = ["fixture"] + (["deit"] if DEIT_WEIGHTS.is_file() else [])
    lines = ["## Property search quality through the index (world)", "",
             f"`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/search_quality.py` — {args.images} world images "
             "indexed by `compsearch index`'s code path, queried through `search.SearchIndex` (Flat indexes: exact). "
             "Text queries: one per factor value; image queries: 40 renders of the compositional split (not indexed).",
             ""]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compsearch-quality-"))
    for choice in choices:
        report = run_demo(workdir, args.images, weights=DEIT_WEIGHTS if choice == "deit" else None, progress=False,
                          say=lambda _: None, model_choice=choice)
        stages = ", ".join(f"{name} {value:.1f} s" for name, value in report.seconds.items())
        lines += [f"**{report.model}** — `compsearch demo --model {choice}` stages: {stages} "
                  f"(total {sum(report.seconds.values()):.0f} s; a first run when --workdir starts empty)", "",
                  *table(report), ""]
        print("\n".join(table(report)), flush=True)
    write_section("search-quality", "\n".join(lines))


if __name__ == "__main__":
    main()
