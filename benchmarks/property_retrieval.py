"""Property retrieval on the synthetic world: does a property index retrieve by its property
and ignore the others? (docs/architecture.md, Property vectors and Search)

    .venv/bin/python benchmarks/property_retrieval.py [--train-images 600] [--eval-images 400] [--k 3]

Two models, both in the fixture CLIP's embedding space:

- ``fixture``: the fixture CLIP's own image tower, decomposed with the open_clip adapter
  (identity aligner);
- ``deit-tiny``: the real DeiT-tiny, aligned to the fixture CLIP with CompAlign trained on
  renders of the world's ``train`` split.

Properties are the world's factors (shape, colour, pattern, scene), each defined by the
world's own zero-shot prompts through the fixture's text encoder. Components are scored by
S_p on the training renders and ranked by the contrast S_p − max_{q≠p} S_q; the top k are
summed into the property vector. On held-out renders of the ``test`` split (another seed),
brute-force cosine retrieval with

- text queries (one per factor value: the same prompt embeddings), and
- reference-image queries (each held-out image against all the others),

through the top-k components, the full representation (all components) and k random
components (averaged over draws). Reported: precision@10 on the queried factor, and leakage
on each other factor (the excess over chance of results sharing the query's value; for text
queries, of results sharing a value with each other; see :mod:`mapping.rank.retrieval`).
Image queries are also run in the model's own space (raw contributions, before alignment).
Prints the tables and rewrites its section of ``benchmarks/RESULTS.md``.

The CLIP is the cached fixture (:func:`indexer.world.fixture_clip.fixture_clip_dir`, trained
once if missing); ``--fixture-steps/--fixture-batch/--fixture-images`` pick (and train once) a
cheaper variant of it where the default one is not cached and CPU time is short.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import click
import torch

from compsearch.indexer.world import FACTORS, SPLITS, WorldItem, render_image
from compsearch.indexer.world.fixture_clip import REPORT_NAME, TrainingConfig, fixture_clip_dir
from compsearch.indexer.world.zero_shot import class_embeddings
from compsearch.mapping.align import Aligner, AlignerMeta, TensorSource, TrainSettings, train_aligner
from compsearch.mapping.decompose import decompose
from compsearch.mapping.images import ImageRecord, iter_batches
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.properties import orthonormal_basis
from compsearch.mapping.rank import PropertyRanking, component_variances, property_rankings, property_scores
from compsearch.mapping.rank.retrieval import (
    agreement_excess,
    chance_match_rate,
    cosine_top_k,
    match_excess,
    match_rate,
    sum_components,
)
from results_section import DEIT_WEIGHTS, shared_cpu, write_section

RENDER_SIZE = 224
TOP = 10  # results per query
INDEXES = ("top-k", "full", "random k")


@dataclass
class Features:
    """One model's decomposition of a set of renders, and the fixture CLIP's embeddings of them."""

    names: list[str]
    contributions: torch.Tensor  # (images, components, d_model)
    targets: torch.Tensor  # (images, d_clip)


def labels_of(items: list[WorldItem]) -> dict[str, torch.Tensor]:
    return {factor: torch.tensor([values.index(getattr(item, factor)) for item in items])
            for factor, values in FACTORS.items()}


class WorldRenders:
    """``items`` as an image source, each rendered as it is listed (so read it in the main
    process, in chunks of one batch: only a batch of renders is ever in memory)."""

    def __init__(self, items: list[WorldItem]) -> None:
        self.items = items
        self.description = f"{len(items)} world renders"

    def records(self) -> Iterator[ImageRecord]:
        for position, item in enumerate(self.items):
            yield ImageRecord(position, f"{item.seed}/{item.index}", None, image=render_image(item, RENDER_SIZE))


def encode_world(items: list[WorldItem], models: dict[str, LoadedModel], clip: LoadedModel,
                 batch_size: int = 32) -> dict[str, Features]:
    """Render ``items`` once, batch by batch, and decompose them with every model (keeping only
    the contributions), each render through every model's transform and the CLIP's."""
    encoders = list(models.values()) + [clip]
    parts: dict[str, list] = {name: [] for name in models}
    targets = []
    names: dict[str, list[str]] = {}
    for batch in iter_batches(WorldRenders(items), [model.preprocess for model in encoders], batch_size,
                              on_error="raise", chunk_size=batch_size):
        for (name, model), pixels in zip(models.items(), batch.pixels):
            decomposition = decompose(model.model, pixels, model_name=model.name)
            names[name] = decomposition.names
            parts[name].append(decomposition.contributions.float())
        targets.append(clip.encode_images(batch.pixels[-1]).float())
    target = torch.cat(targets)
    return {name: Features(names[name], torch.cat(parts[name]), target) for name in models}


def fit_aligner(model: LoadedModel, clip: LoadedModel, train: Features, settings: TrainSettings) -> Aligner:
    """CompAlign on the training renders (10 % of them held out for its cosine)."""
    count, components, model_dim = train.contributions.shape
    heldout = torch.zeros(count, dtype=torch.bool)
    heldout[torch.randperm(count, generator=torch.Generator().manual_seed(0))[:max(1, count // 10)]] = True
    source = TensorSource(train.contributions, train.targets, heldout)
    with torch.enable_grad():
        result = train_aligner(source, components, model_dim, train.targets.shape[1], settings, progress=False)
    meta = AlignerMeta(
        model_name=model.name, model_weights_id=model.weights_id, clip_name=clip.name,
        clip_weights_id=clip.weights_id, component_names=train.names, model_dim=model_dim,
        clip_dim=train.targets.shape[1], first_block=None, final_loss=result.final_loss,
        heldout_cosine=result.heldout_cosine, train_images=int((~heldout).sum()), heldout_images=int(heldout.sum()),
        settings={"batches": result.batches, "epochs": result.epochs, "stopped_early": result.stopped_early},
    )
    return Aligner(meta, result.weight, result.bias)


def identity_aligner(clip: LoadedModel, features: Features) -> Aligner:
    return Aligner.identity(AlignerMeta(
        model_name=clip.name, model_weights_id=clip.weights_id, clip_name=clip.name,
        clip_weights_id=clip.weights_id, component_names=features.names,
        model_dim=features.contributions.shape[-1], clip_dim=features.targets.shape[-1], first_block=None,
        identity=True,
    ))


def rank_factors(aligner: Aligner, probe: Features, bases: dict[str, torch.Tensor],
                 k: int) -> dict[str, PropertyRanking]:
    """S_p of every component on the probe renders, ranked by contrast with the other factors."""
    mapped = aligner.map_components(probe.contributions)
    scores = {factor: property_scores(mapped, basis) for factor, basis in bases.items()}
    values = {factor: list(FACTORS[factor]) for factor in bases}
    variances = component_variances(mapped)
    rankings = property_rankings(probe.names, scores, "text", values, {factor: k for factor in bases},
                                 {factor: variances for factor in bases})
    return {ranking.name: ranking for ranking in rankings}


def measure(gallery: torch.Tensor, labels: dict[str, torch.Tensor], factor: str,
            text_queries: torch.Tensor | None) -> dict[str, float]:
    """precision@10 on ``factor`` and leakage on every other factor, for text and image queries."""
    figures = {}
    if text_queries is not None:
        results = cosine_top_k(text_queries, gallery, TOP)
        figures["text P@10"] = match_rate(results, torch.arange(len(text_queries)), labels[factor])
        for other in FACTORS:
            if other != factor:
                figures[f"text leak {other}"] = agreement_excess(results, labels[other])
    results = cosine_top_k(gallery, gallery, TOP, exclude_self=True)
    figures["image P@10"] = match_rate(results, labels[factor], labels[factor])
    for other in FACTORS:
        figures[f"image excess {other}"] = match_excess(results, labels[other], labels[other], exclude_self=True)
        if other != factor:
            figures[f"image leak {other}"] = figures[f"image excess {other}"]
    return figures


def mean_leak(figures: dict[str, float], kind: str) -> float:
    leaks = [value for key, value in figures.items() if key.startswith(f"{kind} leak ")]
    return sum(leaks) / len(leaks)


def evaluate(aligner: Aligner, rankings: dict[str, PropertyRanking], evaluation: Features,
             labels: dict[str, torch.Tensor], queries: dict[str, torch.Tensor], k: int, draws: int) -> dict:
    """Figures per (factor, index, space): space ``aligned`` (CLIP space, text and image queries)
    or ``own`` (raw contributions, image queries only)."""
    raw = evaluation.contributions
    mapped = aligner.map_components(raw)
    names = evaluation.names
    generator = torch.Generator().manual_seed(0)
    random_draws = [torch.randperm(len(names), generator=generator)[:k] for _ in range(draws)]
    table = {}
    for factor, ranking in rankings.items():
        top = [names.index(name) for name in ranking.top]
        choices = {"top-k": [top], "full": [list(range(len(names)))], "random k": random_draws}
        for index, draws_of_index in choices.items():
            for space, source, text in (("aligned", mapped, queries[factor]), ("own", raw, None)):
                runs = [measure(sum_components(source, chosen), labels, factor, text) for chosen in draws_of_index]
                table[factor, index, space] = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
    return table


def format_model(title: str, table: dict, rankings: dict[str, PropertyRanking], labels: dict[str, torch.Tensor],
                 identity: bool) -> list[str]:
    factors = list(FACTORS)
    own = "= aligned (identity)" if identity else None
    lines = [
        f"**{title}**", "",
        "| property | index | text P@10 | text leak | image P@10 | image leak | image P@10 own | image leak own |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for factor in factors:
        chance = chance_match_rate(labels[factor], labels[factor], exclude_self=True)
        for index in INDEXES:
            aligned, raw = table[factor, index, "aligned"], table[factor, index, "own"]
            own_cells = (f"{raw['image P@10']:.3f} | {mean_leak(raw, 'image'):+.3f}" if not identity
                         else "″ | ″")
            lines.append(
                f"| {factor} | {index} | {aligned['text P@10']:.3f} | {mean_leak(aligned, 'text'):+.3f} | "
                f"{aligned['image P@10']:.3f} | {mean_leak(aligned, 'image'):+.3f} | {own_cells} |"
            )
        lines.append(f"| {factor} | *chance* | {1 / len(FACTORS[factor]):.3f} | 0 | {chance:.3f} | 0 | | |")
    # Means over the factors, P@10 as its excess over chance so factors with different chance rates average.
    def mean(figure) -> float:
        return sum(figure(factor) for factor in factors) / len(factors)

    for index in INDEXES:
        aligned = {factor: table[factor, index, "aligned"] for factor in factors}
        raw = {factor: table[factor, index, "own"] for factor in factors}
        own_cells = "″ | ″" if identity else (
            f"{mean(lambda f: raw[f][f'image excess {f}']):+.3f} | {mean(lambda f: mean_leak(raw[f], 'image')):+.3f}")
        lines.append(
            f"| **mean, P@10 − chance** | {index}"
            f" | {mean(lambda f: aligned[f]['text P@10'] - 1 / len(FACTORS[f])):+.3f}"
            f" | {mean(lambda f: mean_leak(aligned[f], 'text')):+.3f}"
            f" | {mean(lambda f: aligned[f][f'image excess {f}']):+.3f}"
            f" | {mean(lambda f: mean_leak(aligned[f], 'image')):+.3f} | {own_cells} |")
    if own:
        lines.append(f"\nOwn space {own}.")
    lines += [
        "", "Image queries, excess over chance of results sharing the query's value, per factor "
        "(diagonal: the queried factor; off-diagonal: leakage), top-k index → full representation:", "",
        "| index for ↓ \\ factor → | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors),
    ]
    for factor in factors:
        top, full = table[factor, "top-k", "aligned"], table[factor, "full", "aligned"]
        cells = [f"{top[f'image excess {other}']:+.2f} → {full[f'image excess {other}']:+.2f}" for other in factors]
        lines.append(f"| {factor} | " + " | ".join(cells) + " |")
    lines += ["", "Top-k components (contrast score): " + "; ".join(
        f"{factor}: " + ", ".join(f"{name} ({score:+.2f})" for name, score in
                                  zip(ranking.top, ranking.scores[:ranking.k]))
        for factor, ranking in rankings.items())]
    constant = sorted({name for ranking in rankings.values() for name in ranking.constant})
    lines += ["", f"Constant over the probe renders, not ranked: {', '.join(constant) or 'none'}."]
    return lines


def fixture_line(fixture: Path | None, clip_name: str | None) -> str:
    """Which CLIP the figures are in, with its own zero-shot accuracy (weak factors limit text queries)."""
    if fixture is None:
        return f"CLIP: `{clip_name}`."
    report = json.loads((fixture / REPORT_NAME).read_text())
    accuracy = ", ".join(f"{factor} {value:.2f}" for factor, value in report["test_accuracy"].items())
    config = report["config"]
    return (f"CLIP: the cached fixture `{fixture.name}` ({report['steps']} steps of {config['batch_size']} on "
            f"{config['train_images']} renders); its zero-shot accuracy on the test split: {accuracy}.")


@click.command()
@click.option("--train-images", type=int, default=600, show_default=True,
              help="Renders of the world's train split: CompAlign training and the S_p probe set.")
@click.option("--eval-images", type=int, default=400, show_default=True,
              help="Held-out renders of the test split (another seed): the retrieval gallery.")
@click.option("--k", type=int, default=3, show_default=True, help="Components summed per property.")
@click.option("--draws", type=int, default=5, show_default=True, help="Random k-component draws averaged.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Most aligner epochs (early stop by batch).")
@click.option("--deit-weights", type=click.Path(dir_okay=False, path_type=Path), default=DEIT_WEIGHTS,
              show_default=True, help="Real DeiT-tiny weights; the DeiT half is skipped without them.")
@click.option("--clip", "clip_name", default=None,
              help="Another CLIP to use instead of the cached fixture (a model name, e.g. local-dir:PATH).")
@click.option("--fixture-steps", type=int, default=None,
              help="Use (training once, then cached) a fixture with this many steps instead of the default one.")
@click.option("--fixture-batch", type=int, default=None, help="With --fixture-steps: its batch size.")
@click.option("--fixture-images", type=int, default=None, help="With --fixture-steps: its training renders.")
@click.option("--write/--no-write", default=True, show_default=True, help="Rewrite the RESULTS.md section.")
def main(train_images: int, eval_images: int, k: int, draws: int, epochs: int, deit_weights: Path,
         clip_name: str | None, fixture_steps: int | None, fixture_batch: int | None, fixture_images: int | None,
         write: bool) -> None:
    started = time.perf_counter()
    changes = {key: value for key, value in (("steps", fixture_steps), ("batch_size", fixture_batch),
                                             ("train_images", fixture_images)) if value is not None}
    fixture = None if clip_name else fixture_clip_dir(replace(TrainingConfig(), **changes))
    clip = load_model(clip_name or f"local-dir:{fixture}")
    models = {"fixture": clip}
    if deit_weights.is_file():
        models["deit-tiny"] = load_model("deit_tiny_patch16_224", weights=deit_weights)
    else:
        click.echo(f"no DeiT-tiny weights at {deit_weights}: measuring the fixture only", err=True)
    train_items, eval_items = SPLITS["train"].items(train_images), SPLITS["test"].items(eval_images)
    train, evaluation = encode_world(train_items, models, clip), encode_world(eval_items, models, clip)
    encode_seconds = time.perf_counter() - started
    labels = labels_of(eval_items)
    with torch.no_grad():
        queries = {factor: class_embeddings(clip, factor).float() for factor in FACTORS}
    bases = {factor: orthonormal_basis(embeddings) for factor, embeddings in queries.items()}

    sections = []
    for name, model in models.items():
        if model is clip:
            aligner = identity_aligner(clip, train[name])
            title = f"fixture CLIP image tower, identity alignment ({len(train[name].names)} components)"
        else:
            aligner = fit_aligner(model, clip, train[name], TrainSettings(max_epochs=epochs))
            eval_cosine = torch.nn.functional.cosine_similarity(
                aligner.map_sum(evaluation[name].contributions), evaluation[name].targets, dim=-1).mean().item()
            meta = aligner.meta
            title = (f"DeiT-tiny aligned to the fixture CLIP ({len(train[name].names)} components; aligner "
                     f"cosine {meta.heldout_cosine:.3f} on {meta.heldout_images} held-out training renders, "
                     f"{eval_cosine:.3f} on the test split; {meta.settings['epochs']} epochs)")
        rankings = rank_factors(aligner, train[name], bases, k)
        table = evaluate(aligner, rankings, evaluation[name], labels, queries, k, draws)
        sections += format_model(title, table, rankings, labels, aligner.weight is None) + [""]
    seconds = time.perf_counter() - started

    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"OMP_NUM_THREADS={threads} " if threads else "") + ".venv/bin/python benchmarks/property_retrieval.py"
    if (train_images, eval_images, k, draws, epochs) != (600, 400, 3, 5, 30):
        command += (f" --train-images {train_images} --eval-images {eval_images} --k {k} --draws {draws}"
                    f" --epochs {epochs}")
    command += "".join(f" --{flag} {value}" for flag, value in (
        ("fixture-steps", fixture_steps), ("fixture-batch", fixture_batch), ("fixture-images", fixture_images),
        ("clip", clip_name)) if value is not None)
    lines = [
        "## Property retrieval on the world: precision@10 and leakage", "",
        f"`{command}` ({shared_cpu()}; {seconds:.0f} s, of which {encode_seconds:.0f} s rendering "
        "and decomposing)", "",
        f"{train_images} renders of the world's `train` split (seed 0; aligner training with 10 % held out, and "
        f"the S_p probe set), {eval_images} held-out renders of the `test` split (seed 1) as the gallery, "
        f"224 px. Properties: the four factors, each defined by the world's zero-shot prompts "
        f"(`indexer.world.captions.zero_shot_prompts`) through the fixture's text encoder; components ranked "
        f"by S_p − max_(q≠p) S_q; k = {k}; random k averaged over {draws} draws. Text queries: the same "
        "per-value prompt embeddings (one query per value). Image queries: every gallery image against the "
        "others. P@10: share of the 10 results with the query's value of the queried factor. Leak: mean "
        "over the three other factors of the excess over chance of results sharing the query's value "
        "(text queries: of results sharing a value with each other); 0 = the index ignores them.", "",
        fixture_line(fixture, clip_name), "",
        *sections,
    ]
    text = "\n".join(lines).rstrip() + "\n"
    click.echo(text)
    if write:
        write_section("property-retrieval", text)


if __name__ == "__main__":
    main()
