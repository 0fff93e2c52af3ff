"""The ranking stage on image files: decompose a probe set, align, score, rank."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from compsearch.mapping.align import Aligner
from compsearch.mapping.align.features import aligned_batches, decompose_source, resolved_first_block
from compsearch.mapping.errors import CompsearchError, warn, warn_if_few_images
from compsearch.mapping.images import SourceSpec, open_source
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.properties import ExampleProperty, Property, PropertyError, orthonormal_basis
from compsearch.mapping.properties.known_words import warn_if_photos, warn_unknown_words
from compsearch.mapping.properties.text import TextEncoder, description_embeddings
from compsearch.mapping.rank.auto_k import AUTO, HELD_OUT_EVERY, NEIGHBOURS, HeldOut, held_out_mask, k_curve
from compsearch.mapping.rank.ranking import PropertyRanking, Ranking, default_k, property_rankings
from compsearch.mapping.rank.scores import (
    ComponentVariance,
    component_variances,
    label_variance_share,
    property_coordinates,
    scores_from_coordinates,
)

KChoice = int | str  # a number of components, or AUTO


MAX_HELD_OUT = 512  # probe images kept whole for --k auto: (components × d_clip) floats each


@dataclass
class Scored:
    """One source's properties scored over their images: what :func:`property_rankings`
    needs, and for ``--k auto`` the scores on the images not held out and the held-out ones."""

    component_names: list[str]
    scores: dict[str, torch.Tensor]
    variances: dict[str, torch.Tensor]
    images: int
    fit_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    held_out: dict[str, HeldOut] = field(default_factory=dict)


def text_property_scores(
    model: LoadedModel, aligner: Aligner, images: SourceSpec, properties: Sequence[Property],
    encode_text: TextEncoder, batch_size: int = 32, workers: int = 0, progress: bool = False,
    hold_out: bool = False,
) -> Scored:
    """S_p of every text property over the probe set ``images``, with each component's
    variance over it (:class:`ComponentVariance`).

    All properties' bases are stacked so each batch is projected once and only the small
    coordinates a_i(x) are kept, whatever the size of the probe set. With ``hold_out``, one
    image in :data:`HELD_OUT_EVERY` (up to :data:`MAX_HELD_OUT`) is also kept whole, its
    value of each property being the description its whole aligned image is nearest to.
    """
    embeddings = [description_embeddings(prop, encode_text) for prop in properties]
    bases = [orthonormal_basis(embedded) for embedded in embeddings]
    stacked = torch.cat(bases)
    variance = ComponentVariance()
    coordinates, kept, held = [], [], []
    for _, mapped in aligned_batches(model, aligner, images, batch_size, workers, progress):
        variance.update(mapped)
        coordinates.append(property_coordinates(mapped, stacked))
        positions = torch.arange(variance.count - len(mapped), variance.count)
        held.append((positions % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) & hold_out)
        held[-1][held[-1].cumsum(0) > MAX_HELD_OUT - sum(len(part) for part in kept)] = False
        kept.append(mapped[held[-1]])
    every, held = torch.cat(coordinates), torch.cat(held)
    scored = Scored(aligner.component_names, {}, {prop.name: variance.variances for prop in properties}, len(every))
    if hold_out:
        whole = torch.cat(kept)
        nearest = F.normalize(whole.sum(1), dim=-1)
        for prop, embedded in zip(properties, embeddings):
            scored.held_out[prop.name] = HeldOut(whole, (nearest @ embedded.T.to(nearest.dtype)).argmax(-1))
    sizes = [len(basis) for basis in bases]
    for prop, part, fit in zip(properties, every.split(sizes, dim=-1), every[~held].split(sizes, dim=-1)):
        scored.scores[prop.name] = scores_from_coordinates(part)
        if hold_out:
            scored.fit_scores[prop.name] = scores_from_coordinates(fit)
    return scored


def example_contributions(
    model: LoadedModel, aligner: Aligner | None, images: Sequence[Path], batch_size: int = 32,
    workers: int = 0, progress: bool = False,
) -> tuple[list[str], torch.Tensor, dict[Path, int]]:
    """``(component names, contributions (read images, components, d), row of each image read)``
    of example images, in CLIP space when an aligner is given (like text properties), else in
    the model's own. An unreadable image has no row."""
    if aligner is not None:
        parts = list(aligned_batches(model, aligner, list(images), batch_size, workers, progress))
        names = aligner.component_names
    else:
        decomposed = list(decompose_source(model, list(images), None, batch_size, workers, progress))
        parts = [(records, part.contributions.float().cpu()) for records, part in decomposed]
        names = decomposed[0][1].names
    read = [images[record.position] for records, _ in parts for record in records]
    return names, torch.cat([mapped for _, mapped in parts]), {path: row for row, path in enumerate(read)}


def example_property_scores(
    model: LoadedModel, aligner: Aligner | None, examples: Sequence[ExampleProperty], batch_size: int = 32,
    workers: int = 0, progress: bool = False, hold_out: bool = False,
) -> Scored:
    """Each example property's chance-corrected label share (:func:`label_variance_share`)
    over its own images; with ``hold_out``, also over the images not held out
    (:func:`held_out_mask`), and the held-out ones. Properties labelling the same images
    (columns of one table, or folders of links to the same files) decompose them once; an
    unreadable example is skipped with its label."""
    scored = Scored([], {}, {}, 0)
    decomposed: dict[frozenset[Path], tuple[torch.Tensor, dict[Path, int]]] = {}
    for example in examples:
        warn_if_few_images(len(example.images), f"property {example.name!r} is scored", "--examples")
        files = [path.resolve() for path in example.images]
        if frozenset(files) not in decomposed:
            scored.component_names, mapped, rows = example_contributions(
                model, aligner, sorted(set(files)), batch_size, workers, progress)
            decomposed[frozenset(files)] = mapped, rows
            scored.images += len(rows)
        mapped, rows = decomposed[frozenset(files)]
        kept = [(rows[path], label) for path, label in zip(files, example.labels) if path in rows]
        mapped = mapped[torch.tensor([row for row, _ in kept])]
        labels = torch.tensor([label for _, label in kept])
        scored.scores[example.name] = label_variance_share(mapped, labels)
        scored.variances[example.name] = component_variances(mapped)
        if hold_out:
            held = held_out_mask(labels)
            scored.fit_scores[example.name] = label_variance_share(mapped[~held], labels[~held])
            scored.held_out[example.name] = HeldOut(mapped[held], labels[held])
    return scored


def _chosen_k(model_name: str, names: Sequence[str], k: KChoice | dict[str, KChoice] | None) -> dict[str, KChoice]:
    if isinstance(k, (int, str)):
        return {name: k for name in names}
    overrides = k or {}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        warn(f"--k names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not being ranked "
             f"(ranking: {', '.join(names)})", "fix the name, or add the property with --property/--examples")
    return {name: overrides.get(name, default_k(model_name, name)) for name in names}


def _ranked(scored: Scored, source: str, values: dict[str, list[str]], k: dict[str, KChoice],
            templates: dict[str, list[str]] | None = None) -> list[PropertyRanking]:
    """The rankings of one source's properties; a property with k ``auto`` gets the k its
    held-out curve peaks at (components ranked on the other images), and keeps the curve."""
    names = list(scored.scores)
    fixed = {name: 1 if k[name] == AUTO else int(k[name]) for name in names}
    curves = {}
    auto = [name for name in names if k[name] == AUTO]
    if auto:
        for prop in property_rankings(scored.component_names, scored.fit_scores, source, values, fixed,
                                      scored.variances):
            if prop.name not in auto:
                continue
            if len(scored.held_out[prop.name].labels) <= NEIGHBOURS:
                raise CompsearchError(
                    f"--k auto for {prop.name!r}: only {len(scored.held_out[prop.name].labels)} of its "
                    f"{'probe' if source == 'text' else 'example'} images can be held out to choose k",
                    f"give at least {HELD_OUT_EVERY * (NEIGHBOURS + 1)} images, or pass a number: --k {prop.name}=3",
                )
            order = [scored.component_names.index(component) for component in prop.components]
            held_out = {name: data for name, data in scored.held_out.items() if len(data.labels) > NEIGHBOURS}
            curves[prop.name] = k_curve(prop.name, order, held_out)
            fixed[prop.name] = curves[prop.name].best_k()
    rankings = property_rankings(scored.component_names, scored.scores, source, values, fixed, scored.variances,
                                 templates)
    for prop in rankings:
        prop.k_curve = curves.get(prop.name)
    return rankings


def check_rank_inputs(
    properties: Sequence[Property], examples: Sequence[ExampleProperty], aligner: Aligner | None,
    images: SourceSpec | None,
) -> None:
    """Refuse what :func:`rank` cannot do, before any model runs (the CLI calls it before it
    even loads the model)."""
    if properties and (aligner is None or images is None):
        raise PropertyError(
            "properties described in words need an aligner and probe images",
            "pass --aligner and --images, or define the properties by --examples only",
        )
    if not properties and not examples:
        raise PropertyError("nothing to rank: no property given", "pass --property and/or --examples")
    names = [prop.name for prop in properties] + [example.name for example in examples]
    if len(set(names)) != len(names):
        raise PropertyError(f"property names repeat: {names}", "name each property (and examples folder) once")


def _warn_about_the_clip(aligner: Aligner | None, images: SourceSpec | None, properties: Sequence[Property],
                         examples: Sequence[ExampleProperty]) -> None:
    """A closed-vocabulary CLIP (the world's fixture) says which descriptions it never learnt
    and that it knows nothing of photos (:mod:`..properties.known_words`)."""
    clip_name = aligner.meta.clip_name if aligner else None
    for prop in properties:
        warn_unknown_words(clip_name, prop.descriptions, f"property {prop.name!r}")
    if properties and images is not None:
        warn_if_photos(clip_name, (record.path for record in open_source(images).records()), "text properties are scored")
    if examples and aligner is not None:
        warn_if_photos(clip_name, (path for example in examples for path in example.images),
                       "example properties are scored")


def rank(
    model: LoadedModel,
    aligner: Aligner | None,
    images: SourceSpec | None = None,
    properties: Sequence[Property] = (),
    examples: Sequence[ExampleProperty] = (),
    encode_text: TextEncoder | None = None,
    k: KChoice | dict[str, KChoice] | None = None,
    aligner_path: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = False,
    workers: int = 0,
) -> Ranking:
    """Rank ``model``'s components for each text property (scored on the probe set
    ``images``: a folder, a list or Parquet file, …) and each example property; ``k``
    overrides the reference top-k (one number for all, or per property name; ``"auto"``
    chooses it on held-out images, :mod:`.auto_k`). Unreadable
    probe images are skipped with a warning."""
    check_rank_inputs(properties, examples, aligner, images)
    _warn_about_the_clip(aligner, images, properties, examples)
    if properties and encode_text is None:
        raise PropertyError("properties described in words need a CLIP text encoder",
                            "pass the aligner's CLIP's encode_text, or define the properties by examples")
    for prop in properties:
        if len(prop.descriptions) == 1:
            warn(f"property {prop.name!r} has a single description, so S_p scores one text direction, not a "
                 "property's values", f"list the values it contrasts: --property {prop.name}=VALUE1,VALUE2,… "
                 "or a YAML list")
    names = [prop.name for prop in properties] + [example.name for example in examples]
    chosen_k = _chosen_k(model.name, names, k)
    ranking = Ranking(
        model_name=model.name, model_weights_id=model.weights_id,
        aligner=str(Path(aligner_path).expanduser().resolve()) if aligner_path else None,  # usable from any cwd
        clip_name=aligner.meta.clip_name if aligner else None,
        first_block=aligner.meta.first_block if aligner else resolved_first_block(model, None), probe_images=0,
    )
    if properties:
        scored = text_property_scores(model, aligner, images, properties, encode_text, batch_size, workers, progress,
                                      hold_out=any(chosen_k[prop.name] == AUTO for prop in properties))
        ranking.probe_images = scored.images
        warn_if_few_images(scored.images, "text properties are scored", "--images")
        ranking.properties += _ranked(scored, "text", {prop.name: list(prop.descriptions) for prop in properties},
                                      chosen_k, {prop.name: list(prop.templates) for prop in properties})
    if examples:
        scored = example_property_scores(model, aligner, examples, batch_size, workers, progress,
                                         hold_out=any(chosen_k[example.name] == AUTO for example in examples))
        ranking.example_images = scored.images
        ranking.properties += _ranked(scored, "examples", {example.name: list(example.values) for example in examples},
                                      chosen_k)
    return ranking
