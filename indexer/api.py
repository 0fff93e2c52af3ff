"""The indexer from Python: the same calls the CLI makes."""
from __future__ import annotations

from pathlib import Path

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, IndexSummary, Indexer, Mode
from compsearch.indexer.store import IndexStore
from compsearch.indexer.sync import SyncPlan, plan_sync
from compsearch.mapping.images import ImageSource, open_source


def build_index(
    images: str | Path | ImageSource,
    out: str | Path,
    model: str,
    weights: str | Path | None = None,
    pretrained: bool = True,
    aligner: str | Path | None = None,
    ranking: str | Path | None = None,
    properties: list[str] | None = None,
    settings: IndexSettings = IndexSettings(),
    mode: Mode = "resume",
    device: str = "auto",
    first_block: str | int | None = None,
    clip: str | None = None,
    clip_weights: str | Path | None = None,
    sample: int = 1000,
) -> IndexSummary:
    """Index ``images`` into the directory ``out`` (see :mod:`indexer.build`).

    ``properties`` selects properties of ``ranking``; without a ranking they are property
    specs (built-in names, ``NAME=desc1,desc2``, YAML files) ranked on the fly on ``sample``
    images of the collection, which needs ``clip`` (and ``aligner`` unless the model is it).
    """
    from compsearch.mapping.models import load_model

    source = open_source(images)  # a wrong path fails before any model loads
    loaded = load_model(model, weights=weights, device=device, pretrained=pretrained)
    if properties and ranking is None:
        from compsearch.indexer.ranking_on_the_fly import rank_on_sample
        from compsearch.mapping.images.parallelism import choose_parallelism

        workers = choose_parallelism(loaded.device, settings.workers, settings.threads).workers
        aligner, ranking = rank_on_sample(loaded, source, out, properties, clip, clip_weights, aligner, sample,
                                          settings.batch_size, workers, settings.progress)
        properties = None  # every property just ranked
    artifacts = encoder_for_build(loaded, out, aligner, ranking, properties, first_block)
    return Indexer(out, artifacts.encoder, settings, artifacts.provenance).run(source, mode)


def plan_index(images: str | Path | ImageSource, out: str | Path, mode: Mode = "resume") -> SyncPlan:
    """What ``build_index`` would do to ``out`` (``--dry-run``), without a model: nothing is written."""
    store = IndexStore(out)
    return plan_sync(open_source(images), store if store.exists() and mode != "overwrite" else None,
                     append=mode == "append")
