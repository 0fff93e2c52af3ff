"""Runners: how the encode and write stages are driven over a plan's work units.

:func:`run_in_process` reads the units of one :class:`~mapping.images.plan.Plan` (all of a
run's, or one ``--shard I/N``'s) with the loader's workers, encodes each batch
(:class:`~indexer.encode.UnitEncoder`) and writes each unit as soon as it is complete
(:meth:`~indexer.store.IndexStore.write_chunk`). Another runner (tasks on a cluster) drives the
same two stages per unit (:mod:`indexer.ray_runner`); the finish stage runs once all units
are written.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from compsearch.indexer.encode import UnitEncoder
from compsearch.indexer.manifest import WRITE_COUNTS as COUNTS
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import ChunkRows, IndexStore
from compsearch.mapping.chunk_store import interrupted
from compsearch.mapping.errors import Interrupted
from compsearch.mapping.images import ImageSource, iter_batches
from compsearch.mapping.images.parallelism import choose_parallelism
from compsearch.mapping.images.plan import Plan

Runner = Callable[[IndexStore, ImageSource, Plan, UnitEncoder, IndexSettings], dict[str, int]]


def run_in_process(store: IndexStore, source: ImageSource, work: Plan, stage: UnitEncoder,
                   settings: IndexSettings) -> dict[str, int]:
    """Encode and write ``work``'s units here; what they did (see ``COUNTS``).

    Ctrl-C writes the units half done as far as they got (a part the next run's plan simply
    finds as rows already indexed) and raises :func:`~mapping.chunk_store.interrupted`.
    """
    counts = dict.fromkeys(COUNTS, 0)
    bar = tqdm(total=work.images_todo + work.images_done, initial=work.images_done, desc="indexing", unit="img",
               disable=not settings.progress, smoothing=0.05)
    parallel = choose_parallelism(stage.encoder.model.device, settings.workers, settings.threads)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(parallel.threads)
    try:
        for batch in iter_batches(source, [stage.encoder.model.preprocess], settings.batch_size, parallel.workers,
                                  "skip", work.chunk_size, skip_chunks=work.done_chunks, partition=work.partition,
                                  jpeg_device=_jpeg_device(stage, settings)):
            rows = stage.take(batch)
            bar.update(len(batch) + len(batch.skipped))
            if rows is not None:
                _write(store, rows, counts)
                bar.set_postfix(skipped=counts["skipped"], duplicates=counts["duplicates"], refresh=False)
    except KeyboardInterrupt:  # every image encoded is kept: the units half done too
        for rows in stage.partial():
            _write(store, rows, counts)
        raise stopped(store, work, stage.ids.run) from None
    finally:
        bar.close()
        torch.set_num_threads(threads_before)  # the caller's own setting, for what it runs next
    return counts


def stopped(store: IndexStore, work: Plan, run: int, why: str = "interrupted") -> Interrupted:
    """The error of a run stopped before its end: the images its parts hold (a rerun plans
    from the files, so they are kept, also those of a unit half done), and that a rerun continues."""
    return interrupted(store.written(run), work.listed, store.folder, why)


def _write(store: IndexStore, rows: ChunkRows, counts: dict[str, int]) -> None:
    store.write_chunk(rows)
    for name, count in rows.counts().items():
        counts[name] += count


def _jpeg_device(stage: UnitEncoder, settings: IndexSettings) -> str | None:
    device = stage.encoder.model.device
    return str(device) if device.type == "cuda" and settings.jpeg_on_device else None
