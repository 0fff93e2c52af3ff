"""The whole product on an embedded default, offline: ``compsearch demo``.

Renders a collection of the labelled synthetic world, takes the fixture CLIP shipped with
the package, ranks components per property, indexes the collection, and answers text and
reference-image queries by property — measuring each against the world's known labels,
next to what the full representation gives. With the real DeiT-tiny weights at hand
(``--weights`` or ``$COMPSEARCH_WEIGHTS_DIR``) it decomposes DeiT-tiny aligned to the
fixture CLIP instead of the fixture's own image tower.

Every stage is cached in the work folder, so a rerun takes seconds.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from compsearch.indexer.world import FACTORS, get_split, write_split
from compsearch.mapping.properties import Property

# The world's factors as properties: one description per value, in the words of its captions.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "shape": {value: value for value in FACTORS["shape"]},
    "colour": {value: value for value in FACTORS["colour"]},
    "pattern": {value: value for value in FACTORS["pattern"]},
    "scene": {"plain": "blank", "beach": "beach", "forest": "forest", "city": "city", "water": "water"},
}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a {}.", "a photo of a {}."),
    "colour": ("a {} shape.", "a {} object.", "a {} thing."),
    "pattern": ("a {} shape.", "a {} object."),
    "scene": ("shape, {} background.", "a shape on a {} background."),
}
DEIT = "deit_tiny_patch16_224"
TOP = 10


def world_properties() -> list[Property]:
    return [Property(name, tuple(DESCRIPTIONS[name].values()), TEMPLATES[name]) for name in DESCRIPTIONS]


@dataclass
class QueryFigures:
    """Precision@10 on the queried factor, and agreement on the other factors over chance
    (leakage: how much the results also share what the query did not ask for)."""

    property: str
    kind: str  # "text" or "image"
    queries: int
    precision_property_index: float
    precision_full_index: float
    leakage_property_index: float | None  # image queries only: a text names one factor alone
    leakage_full_index: float | None
    map_property_index: float = 0.0  # mean average precision over the whole collection's ranking
    map_full_index: float = 0.0


@dataclass
class DemoReport:
    model: str
    space: str
    collection: int
    index_dir: str
    figures: list[QueryFigures] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few queries with their top results
    seconds: dict[str, float] = field(default_factory=dict)


def _deit_weights(weights: Path | None) -> Path | None:
    """Real DeiT-tiny weights when any are at hand: ``weights``, else ``$COMPSEARCH_WEIGHTS_DIR``
    (the model loader's own lookup)."""
    from compsearch.mapping.errors import ModelLoadError
    from compsearch.mapping.models import find_local_weights, parse_model_name

    if weights is not None:
        return weights
    try:
        found = find_local_weights(parse_model_name(DEIT), None)
    except ModelLoadError:
        found = None
    return found


def _labels(parquet: Path) -> tuple[list[str], dict[str, list[str]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    return table.column("file").to_pylist(), {factor: table.column(factor).to_pylist() for factor in FACTORS}


def _agreement(results: list[list[str]], wanted: list[str]) -> float:
    return statistics.mean(sum(value == target for value in row) / max(1, len(row))
                           for row, target in zip(results, wanted))


def _leakage(results: dict[str, list[list[str]]], query_labels: dict[str, list[str]], factor: str) -> float:
    """Mean over the other factors of agreement minus chance."""
    return statistics.mean(_agreement(results[other], query_labels[other]) - 1 / len(FACTORS[other])
                           for other in FACTORS if other != factor)


def _average_precision(ranked: list[str], wanted: str, relevant: int) -> float:
    """AP of one ranking of the whole collection: mean precision at each relevant item."""
    hits, total = 0, 0.0
    for position, value in enumerate(ranked, start=1):
        if value == wanted:
            hits += 1
            total += hits / position
    return total / max(1, relevant)


def _measure(index, factor: str, kind: str, queries: list[Any], query_labels: dict[str, list[str]],
             labels_of: dict[int, dict[str, str]]) -> QueryFigures:
    """The queries through ``factor``'s index and through ``full``, in one batch (each
    reference image is decomposed once for both), each ranking the whole collection."""
    from compsearch.search.query import FULL, MAX_K, Query

    names = (factor, FULL)
    batch = [Query(text=q, property=name) if kind == "text" else Query(image=q, property=name)
             for name in names for q in queries]
    answered = index.search_batch(batch, k=min(len(labels_of), MAX_K))
    relevant = Counter(labels[factor] for labels in labels_of.values())
    figures = {}
    for position, name in enumerate(names):
        answers = answered[position * len(queries):(position + 1) * len(queries)]
        by_factor = {other: [[labels_of[r.id][other] for r in answer.results] for answer in answers]
                     for other in FACTORS}
        top = {other: [row[:TOP] for row in rows] for other, rows in by_factor.items()}
        mean_ap = statistics.mean(_average_precision(row, wanted, relevant[wanted])
                                  for row, wanted in zip(by_factor[factor], query_labels[factor]))
        figures[name] = (_agreement(top[factor], query_labels[factor]),
                         _leakage(top, query_labels, factor) if kind == "image" else None, mean_ap)
    return QueryFigures(factor, kind, len(queries), figures[factor][0], figures[FULL][0],
                        figures[factor][1], figures[FULL][1], figures[factor][2], figures[FULL][2])


def run_demo(workdir: Path, count: int = 1000, weights: Path | None = None, progress: bool = True,
             say: Callable[[str], None] = print, model_choice: str = "auto") -> DemoReport:
    """Build (or reuse) the demo index in ``workdir`` and measure its queries. ``model_choice``:
    ``deit`` (real weights required), ``fixture`` (the fixture CLIP decomposes itself), or
    ``auto`` (DeiT-tiny when its weights are at hand)."""
    import time

    from compsearch.indexer.build import IndexSettings, Indexer
    from compsearch.indexer.artifacts import encoder_for_build
    from compsearch.indexer.store import IndexStore
    from compsearch.indexer.world.fixture_clip import fixture_clip_dir
    from compsearch.mapping.align import align, load_aligner, save_aligner
    from compsearch.mapping.align.run import identity_aligner
    from compsearch.mapping.models import load_model, weights_id
    from compsearch.mapping.rank import Ranking, rank
    from compsearch.search.index import SearchIndex

    workdir = Path(workdir).expanduser()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    deit_weights = None if model_choice == "fixture" else _deit_weights(weights)
    if model_choice == "deit" and deit_weights is None:
        from compsearch.mapping.errors import ModelLoadError

        raise ModelLoadError(f"no {DEIT} weights found", "pass --weights FILE, or --model fixture")
    size = 224 if deit_weights else 64
    world = workdir / f"world-{size}"
    say(f"1/5 rendering the world: {count} images to index, {count // 2} probe images, 40 query images ({world})")
    collection = write_split(world, get_split("test"), count, size, progress=progress)
    probe = write_split(world, get_split("train"), max(200, count // 2), size, progress=progress)
    queries = write_split(world, get_split("compositional"), 40, size, progress=progress)
    seconds["render"] = time.perf_counter() - started

    clip_name = f"local-dir:{fixture_clip_dir()}"
    clip = load_model(clip_name)
    if deit_weights:
        model = load_model(DEIT, weights=deit_weights)
        aligner_path = workdir / "deit-to-fixture.aligner"
        say(f"2/5 aligning {DEIT} (real weights) to the fixture CLIP on the probe images")
        if not aligner_path.with_suffix(".aligner.json").is_file() or \
                load_aligner(aligner_path).meta.model_weights_id != model.weights_id:
            align(model, clip, probe, aligner_path, progress=progress)
    else:
        model = clip
        aligner_path = workdir / "fixture-identity.aligner"
        why = "--model fixture" if model_choice == "fixture" else \
            "real DeiT-tiny weights were not found; pass --weights to use them"
        say(f"2/5 the fixture CLIP decomposes itself: its alignment is the identity ({why})")
        if not aligner_path.with_suffix(".aligner.json").is_file():
            save_aligner(identity_aligner(model, probe), aligner_path)
    seconds["align"] = time.perf_counter() - started - sum(seconds.values())

    tag = "deit" if deit_weights else "fixture"
    ranking_path = workdir / f"{tag}-ranking.json"
    say("3/5 ranking components per property (shape, colour, pattern, scene) on the probe images")
    if not ranking_path.is_file() or Ranking.load(ranking_path).model_weights_id != model.weights_id:
        ranked = rank(model, load_aligner(aligner_path), probe, world_properties(), (), clip.encode_text,
                      aligner_path=aligner_path, progress=progress)
        ranked.save(ranking_path)
    seconds["rank"] = time.perf_counter() - started - sum(seconds.values())

    index_dir = workdir / f"{tag}.index"
    store = IndexStore(index_dir)
    say(f"4/5 indexing the {count} world images into {index_dir}")
    manifest = store.read_manifest() if store.exists() else None
    reusable = manifest is not None and bool(manifest.runs) and manifest.runs[-1].status == "complete" \
        and manifest.counts.images == count and manifest.ranking is not None \
        and manifest.ranking.id == weights_id(ranking_path)
    if not reusable:
        built = encoder_for_build(model, index_dir, aligner_path, ranking_path)
        Indexer(index_dir, built.encoder, IndexSettings(workers=0, progress=progress), built.provenance).run(
            collection, "overwrite")
    seconds["index"] = time.perf_counter() - started - sum(seconds.values())

    say("5/5 querying by text and by reference image, per property and through the full representation")
    index = SearchIndex(index_dir, model=model, clip=clip)  # the models are loaded already
    table = store.read_table(columns=["id", *FACTORS])
    labels_of = {row.pop("id"): row for row in table.to_pylist()}

    query_files, query_labels = _labels(queries)
    paths = [str(queries.parent / file) for file in query_files]
    report = DemoReport(DEIT if deit_weights else "fixture CLIP (identity)", "clip", count, str(index_dir))
    for factor, values in DESCRIPTIONS.items():
        texts = list(values.values())
        report.figures.append(_measure(index, factor, "text", texts, {factor: list(values)}, labels_of))
        report.figures.append(_measure(index, factor, "image", paths, query_labels, labels_of))
    for factor, text in (("pattern", "striped"), ("colour", "red"), ("shape", "star")):
        answer = index.search(text=text, property=factor, k=5)
        report.examples.append({"query": f"{factor}: {text!r}", "results": [
            {"id": r.id, "score": round(r.score, 3), "labels": labels_of[r.id]} for r in answer.results]})
    seconds["query"] = time.perf_counter() - started - sum(seconds.values())
    report.seconds = {name: round(value, 1) for name, value in seconds.items()}
    return report


def format_demo(report: DemoReport) -> str:
    lines = [
        "", f"{report.model} over {report.collection} world images ({report.index_dir}); "
        f"precision@{TOP} on the queried property, leakage = agreement on the other properties over chance",
        "", f"{'property':<9} {'query':<6} {'P@10 property index':>20} {'P@10 full':>10} "
            f"{'mAP property':>13} {'mAP full':>9} {'leak property':>14} {'leak full':>10}",
    ]
    for f in report.figures:
        leaks = "" if f.leakage_property_index is None else \
            f" {f.leakage_property_index:>+14.2f} {f.leakage_full_index:>+10.2f}"
        lines.append(f"{f.property:<9} {f.kind:<6} {f.precision_property_index:>20.2f} {f.precision_full_index:>10.2f}"
                     f" {f.map_property_index:>13.2f} {f.map_full_index:>9.2f}" + leaks)
    for example in report.examples:
        lines += ["", f"top results for {example['query']}:"]
        lines += [f"  id {r['id']:>5}  {r['score']:.3f}  " + " ".join(r["labels"].values()) for r in example["results"]]
    lines += ["", "time: " + ", ".join(f"{name} {value:.1f} s" for name, value in report.seconds.items()), "",
              "Now your own photos (the fixture CLIP knows only this world's words: not for photos).",
              "Offline: define each property by examples, one folder of images per value (~/stripes/striped/, "
              "~/stripes/plain/, …):",
              "  compsearch rank --model deit_tiny_patch16_224 --weights deit_tiny.safetensors "
              "--examples ~/stripes --k auto --out ranking.json",
              "  compsearch index ~/photos --out photos.index --model deit_tiny_patch16_224 "
              "--weights deit_tiny.safetensors --ranking ranking.json",
              "  compsearch search photos.index --image ~/photos/cat.jpg --property stripes",
              "Online (downloads a CLIP trained on photos), properties in words and text queries:",
              "  compsearch align --model deit_base_patch16_224 --clip ViT-B-16:laion2b_s34b_b88k "
              "--images ~/photos --out deit.aligner",
              "  compsearch rank --model deit_base_patch16_224 --aligner deit.aligner --images ~/photos "
              "--property colour --property pattern --out ranking.json",
              "  compsearch index ~/photos --out photos.index --model deit_base_patch16_224 "
              "--aligner deit.aligner --ranking ranking.json",
              "  compsearch search photos.index --text striped --property pattern",
              "Either index: compsearch serve photos.index"]
    return "\n".join(lines)
