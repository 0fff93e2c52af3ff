"""``compsearch index --property P`` without a ranking file: rank on a sample of the collection.

The aligner (the identity when the model *is* the CLIP) and the ranking are written into
``DIR/artifacts/`` and recorded in the manifest like files given by the user; a resumed
run reuses them, so its components cannot drift from those of the run it continues.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path

from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.images import ImageSource, PathListSource
from compsearch.mapping.models import LoadedModel

ARTIFACTS = "artifacts"
DEFAULT_SAMPLE = 1000


def sample_source(source: ImageSource, count: int) -> PathListSource:
    """About ``count`` images spread evenly over the listing (every n-th), in two streaming
    passes, so only the sample is held in memory however long the listing."""
    listed = sum(1 for record in source.records() if record.path is not None)
    if not listed:
        raise CompsearchError(f"no image files listed in {source.description}", "pass a folder or list of image files")
    step = max(1, listed // count)
    paths = (record.path for record in source.records() if record.path is not None)
    which = "every image" if step == 1 else f"one image in {step}"
    return PathListSource(list(islice(islice(paths, 0, None, step), count)), f"{which} of {source.description}")


def rank_on_sample(
    model: LoadedModel, source: ImageSource, out: str | Path, property_specs: list[str],
    clip_name: str | None, clip_weights: str | Path | None, aligner_path: str | Path | None,
    sample: int = DEFAULT_SAMPLE, batch_size: int = 32, workers: int = 0, progress: bool = True,
) -> tuple[Path, Path]:
    """``(aligner path, ranking path)`` for ``property_specs`` ranked on a sample of ``source``."""
    from compsearch.mapping.align import load_aligner, save_aligner
    from compsearch.mapping.align.features import clip_for_aligner
    from compsearch.mapping.align.run import identity_aligner, is_same_model
    from compsearch.mapping.models import load_model
    from compsearch.mapping.properties import resolve_properties
    from compsearch.mapping.rank import rank

    folder = Path(out).expanduser() / ARTIFACTS
    ranking_path = folder / "ranking.json"
    if ranking_path.is_file():  # a resumed run keeps the components it started with
        from compsearch.mapping.rank import Ranking

        recorded = Ranking.load(ranking_path).aligner
        return Path(aligner_path or recorded), ranking_path
    properties = resolve_properties(property_specs)
    probe = sample_source(source, sample)
    if aligner_path is not None:
        aligner = load_aligner(aligner_path)
        clip = clip_for_aligner(aligner, model, clip_weights)
    else:
        if clip_name is None:
            raise CompsearchError(
                "--property without --ranking ranks on the fly and needs a text encoder",
                "pass --clip NAME (and --aligner from `compsearch align` unless --model is that CLIP), "
                "or a --ranking file",
            )
        same_files = clip_name == model.name and clip_weights is None
        clip = model if same_files else load_model(clip_name, weights=clip_weights, device=str(model.device))
        if not is_same_model(model, clip):
            raise CompsearchError(
                f"{model.name} is not the CLIP {clip_name}: its components need an aligner into that CLIP's space",
                f"train one: compsearch align --model {model.name} --clip {clip_name} --images … --out NAME, "
                "then pass --aligner NAME",
            )
        aligner_path = save_aligner(identity_aligner(model, probe), folder / "identity.aligner")
        aligner = load_aligner(aligner_path)
    ranking = rank(model, aligner, probe, properties, (), clip.encode_text, aligner_path=aligner_path,
                   batch_size=batch_size, workers=workers, progress=progress)
    return Path(aligner_path), ranking.save(ranking_path)
