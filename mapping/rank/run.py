"""The ranking stage on image files: decompose a probe set, align, score, rank.

Text properties can also be scored on components that come from elsewhere than a forward
pass (an index's component store, :mod:`indexer.relearn`): ``mapped`` batches of aligned
components stand in for the probe images.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from compsearch.mapping.align import Aligner
from compsearch.mapping.align.features import aligned_batches, decompose_source, resolved_first_block
from compsearch.mapping.errors import warn, warn_if_few_images
from compsearch.mapping.images import SourceSpec
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.properties import ExampleProperty, Property, PropertyError, property_basis
from compsearch.mapping.properties.text import TextEncoder
from compsearch.mapping.rank.ranking import Ranking, default_k, property_rankings
from compsearch.mapping.rank.scores import (
    ComponentVariance,
    component_variances,
    label_variance_share,
    property_coordinates,
    scores_from_coordinates,
)


def text_property_scores(
    model: LoadedModel, aligner: Aligner, images: SourceSpec | None, properties: Sequence[Property],
    encode_text: TextEncoder, batch_size: int = 32, workers: int = 0, progress: bool = False,
    mapped: Iterable[torch.Tensor] | None = None,
) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor, int]:
    """``(component names, {property: S_p}, variances, images read)`` over the probe set
    ``images`` (or the aligned component batches ``mapped``), with each component's variance
    over it (:class:`ComponentVariance`).

    All properties' bases are stacked so each batch is projected once and only the small
    coordinates a_i(x) are kept, whatever the size of the probe set.
    """
    bases = [property_basis(prop, encode_text) for prop in properties]
    stacked = torch.cat(bases)
    variance = ComponentVariance()
    coordinates = []
    if mapped is None:
        mapped = (batch for _, batch in aligned_batches(model, aligner, images, batch_size, workers, progress))
    for batch in mapped:
        variance.update(batch)
        coordinates.append(property_coordinates(batch, stacked))
    per_property = torch.cat(coordinates).split([len(basis) for basis in bases], dim=-1)
    scores = {prop.name: scores_from_coordinates(part) for prop, part in zip(properties, per_property)}
    return aligner.component_names, scores, variance.variances, sum(len(part) for part in coordinates)


def example_property_scores(
    model: LoadedModel, aligner: Aligner | None, examples: ExampleProperty, batch_size: int = 32,
    workers: int = 0, progress: bool = False,
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """``(component names, variance share, variances)``: the share of each component's
    variance the example images' labels explain, and the variance itself, in CLIP space
    when an aligner is given (like text properties), else in the model's own. An unreadable
    example is skipped (with its label)."""
    images = list(examples.images)
    if aligner is not None:
        parts = list(aligned_batches(model, aligner, images, batch_size, workers, progress))
        names = aligner.component_names
    else:
        decomposed = list(decompose_source(model, images, None, batch_size, workers, progress))
        parts = [(records, part.contributions.float().cpu()) for records, part in decomposed]
        names = decomposed[0][1].names
    labels = torch.tensor([examples.labels[record.position] for records, _ in parts for record in records])
    mapped = torch.cat([mapped for _, mapped in parts])
    return names, label_variance_share(mapped, labels), component_variances(mapped)


def _chosen_k(model_name: str, names: Sequence[str], k: int | dict[str, int] | None) -> dict[str, int]:
    if isinstance(k, int):
        return {name: k for name in names}
    overrides = k or {}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        warn(f"--k names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not being ranked "
             f"(ranking: {', '.join(names)})", "fix the name, or add the property with --property/--examples")
    return {name: overrides.get(name, default_k(model_name, name)) for name in names}


def check_rank_inputs(
    properties: Sequence[Property], examples: Sequence[ExampleProperty], aligner: Aligner | None,
    images: SourceSpec | Iterable[torch.Tensor] | None,
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


def rank(
    model: LoadedModel,
    aligner: Aligner | None,
    images: SourceSpec | None = None,
    properties: Sequence[Property] = (),
    examples: Sequence[ExampleProperty] = (),
    encode_text: TextEncoder | None = None,
    k: int | dict[str, int] | None = None,
    aligner_path: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = False,
    workers: int = 0,
    mapped: Iterable[torch.Tensor] | None = None,
) -> Ranking:
    """Rank ``model``'s components for each text property (scored on the probe set
    ``images``: a folder, a list or Parquet file, …, or on the aligned component batches
    ``mapped``) and each example property; ``k`` overrides the reference top-k (one number
    for all, or per property name). Unreadable probe images are skipped with a warning."""
    check_rank_inputs(properties, examples, aligner, images if mapped is None else mapped)
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
        component_names, scores, variances, ranking.probe_images = text_property_scores(
            model, aligner, images, properties, encode_text, batch_size, workers, progress, mapped
        )
        warn_if_few_images(ranking.probe_images, "text properties are scored", "--images")
        values = {prop.name: list(prop.descriptions) for prop in properties}
        ranking.properties += property_rankings(
            component_names, scores, "text", values, chosen_k, {name: variances for name in scores},
            templates={prop.name: list(prop.templates) for prop in properties},
        )
    if examples:
        shares, example_variances, component_names = {}, {}, []
        for example in examples:
            warn_if_few_images(len(example.images), f"property {example.name!r} is scored", "--examples")
            component_names, shares[example.name], example_variances[example.name] = example_property_scores(
                model, aligner, example, batch_size, workers, progress
            )
        values = {example.name: list(example.values) for example in examples}
        ranking.properties += property_rankings(component_names, shares, "examples", values, chosen_k,
                                                example_variances)
    return ranking
