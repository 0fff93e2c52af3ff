"""The Ray runner (``compsearch index … --backend ray``): a plan's units as Ray Data.

A dataset of the units still to do (one row per :class:`~mapping.images.plan.WorkUnit`, a
small value) flows through three steps, each one of our stages handed to Ray unchanged:

- *decode* tasks: a unit's images read, decoded and preprocessed
  (:func:`~mapping.images.iter_unit_batches`);
- *encode* actors (``map_batches`` with an ``ActorPoolStrategy``: one actor per GPU with
  ``num_gpus=1``, else a CPU pool): each rebuilds the run's encoder once, from the index's
  manifest (model name, weights file, aligner, components, precision: what crosses the wire
  is the folder's name, never a pickled model), and turns a unit's batches into its rows
  (:class:`~indexer.encode.UnitEncoder`);
- *write* tasks: :meth:`~indexer.store.IndexStore.write_chunk`, a unit's parts atomically.

A unit is de-duplicated against the files known when the run was planned and against itself,
never against units running beside it, so which copy is kept does not depend on scheduling:
the finish stage keeps the smallest id, as after a sharded run — the single process's choice.
A worker that dies has its unit redone (Ray Data's own retries: lost tasks are resubmitted, dead
actors restarted; an exception raised by our code is not retried but stops the run); parts are written only for complete
units, so nothing is written twice, and a rerun plans only the units with no shard on disk.
Only this module imports ray, and only when the backend is asked for.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from compsearch.indexer.artifacts import encoder_for_manifest, locate_artifact
from compsearch.indexer.encode import RunIds, UnitEncoder
from compsearch.indexer.known_files import KnownFiles
from compsearch.indexer.runners import COUNTS, stopped
from compsearch.indexer.settings import IndexSettings
from compsearch.indexer.store import IndexStore
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.errors import CompsearchError, warn
from compsearch.mapping.images import ImageSource, iter_unit_batches
from compsearch.mapping.images.loader import Transform
from compsearch.mapping.images.plan import Plan, WorkUnit
from compsearch.mapping.models import RANDOM_INIT, load_model

DECODE_CPUS = 0.5  # what one decode task asks for (see run_on_ray)
WRITE_CPUS = 0.5  # and one write task


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both
    except ImportError:
        raise CompsearchError("--backend ray needs Ray, which is not installed",
                              "pip install 'compsearch[ray]' (or run without --backend ray)") from None
    return ray


def load_encoder(folder: str | Path, device: str) -> PropertyEncoder:
    """The encoder an index's manifest records, loaded on ``device`` (what each actor runs)."""
    store = IndexStore(folder)
    manifest = store.read_manifest()
    weights = None if manifest.model_weights is None else locate_artifact(manifest.model_weights, store.folder,
                                                                          "model weights")
    model = load_model(manifest.encoder.model_name, weights=weights, device=device)
    return encoder_for_manifest(manifest, store.folder, model)


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A column of Python objects (Ray Data carries them pickled)."""
    column = np.empty(len(values), dtype=object)
    for position, value in enumerate(values):  # element by element: lists must not become dimensions
        column[position] = value
    return column


def decode_units(units: dict[str, np.ndarray], source: ImageSource, transforms: list[Transform],
                 batch_size: int) -> dict[str, np.ndarray]:
    """The decode step: each unit → its batches of preprocessed images."""
    return {"batches": _objects([
        list(iter_unit_batches(source, WorkUnit(int(chunk), int(start), int(stop)), transforms, batch_size))
        for chunk, start, stop in zip(units["chunk"], units["start"], units["stop"])])}


class EncodeUnits:
    """The encode step, one per actor: the encoder is loaded once, then each unit's batches
    become its rows (see the module docstring for what a unit is de-duplicated against)."""

    def __init__(self, folder: str, device: str, threads: int, known: KnownFiles, ids: RunIds,
                 store: str | None) -> None:
        torch.set_num_threads(threads)
        self.encoder = load_encoder(folder, device)
        self.known = known
        self.ids = ids
        self.store = store  # the component store's dtype, as the single-process run keeps it

    def __call__(self, units: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = []
        for batches in units["batches"]:
            stage = UnitEncoder(self.encoder, copy.deepcopy(self.known), self.ids, self.store)
            done.append([stage.take(batch) for batch in batches][-1])  # the last batch hands the rows back
        return {"rows": _objects(done)}


def write_units(units: dict[str, np.ndarray], folder: str) -> dict[str, np.ndarray]:
    """The write step: each unit's parts, atomically; what each did (``COUNTS``)."""
    store = IndexStore(folder)
    counts = []
    for rows in units["rows"]:
        store.write_chunk(rows)
        counts.append(rows.counts())
    return {name: np.array([count[name] for count in counts], dtype=np.int64) for name in COUNTS}


def _pool(ray: ModuleType) -> dict[str, Any]:
    """The encoder actors: one per GPU; without GPUs, half the cores for the model (actors of
    up to 4 threads), the other half for decoding."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return dict(size=gpus, num_gpus=1, num_cpus=1, device="cuda", threads=1)
    cpus = max(1, int(resources.get("CPU", 1)))  # actors ask whole cores: never DECODE_CPUS, so never fused
    threads = min(4, max(1, cpus // 2))
    return dict(size=max(1, cpus // (2 * threads)), num_gpus=0, num_cpus=threads, device="cpu", threads=threads)


def _warn_if_busy(ray: ModuleType, pool: dict[str, Any]) -> None:
    """On a cluster this process did not start, say so when its free cores are fewer than the
    run needs to start: Ray does not stop a failed run's actors mid-task (ray-project/ray#24948),
    and a run waiting on cores they hold would otherwise look hung."""
    needed = pool["size"] * pool["num_cpus"] + DECODE_CPUS + WRITE_CPUS
    free = ray.available_resources().get("CPU", 0.0)
    if free < needed:
        warn(f"the Ray cluster has {free:g} CPU(s) free and this run needs {needed:g} to start: it waits until "
             "other work on the cluster (perhaps an earlier failed run's workers) lets them go",
             "wait, or restart the cluster")


def _execute(written: Any) -> dict[str, int]:
    """Run the dataset, summing what its units did. Stopped early, its iterator is closed here:
    that stops the executor and frees its actors at once (not when the exception is dropped),
    so a rerun from this process finds the cluster's cores free."""
    counts = dict.fromkeys(COUNTS, 0)
    rows = iter(written.iter_rows())
    try:
        for row in rows:
            for name in COUNTS:
                counts[name] += int(row[name])
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    return counts


def run_on_ray(store: IndexStore, source: ImageSource, work: Plan, stage: UnitEncoder,
               settings: IndexSettings) -> dict[str, int]:
    """Encode and write ``work``'s units on a Ray cluster (``settings.address``; None: the one
    this process is connected to, else a local one started here); what they did (``COUNTS``)."""
    counts = dict.fromkeys(COUNTS, 0)
    if not work.todo:
        return counts
    if stage.encoder.model.weights_id == RANDOM_INIT:
        raise CompsearchError("--backend ray loads the model in each worker from its weights file, and a randomly "
                              "initialised model has none", "pass --weights FILE (or a pretrained model)")
    ray = import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=settings.address, include_dashboard=False, logging_level="warning")
    try:
        DataContext.get_current().enable_progress_bars = settings.progress
        pool = _pool(ray)
        if not started_here:
            _warn_if_busy(ray, pool)
        folder = str(store.folder.resolve())
        units = ray.data.from_items([{"chunk": u.chunk, "start": u.start, "stop": u.stop} for u in work.todo],
                                    override_num_blocks=len(work.todo))
        # Half a core per decode task: reading waits on the disk, and a request unlike the
        # actors' keeps Ray Data from fusing decoding into them (they would decode and encode
        # in turn, one unit at a time, instead of beside each other).
        decoded = units.map_batches(decode_units, batch_size=1, num_cpus=DECODE_CPUS, fn_kwargs=dict(
            source=source, transforms=[stage.encoder.model.preprocess], batch_size=settings.batch_size))
        encoded = decoded.map_batches(
            EncodeUnits, batch_size=1, compute=ActorPoolStrategy(size=pool["size"]), num_gpus=pool["num_gpus"],
            num_cpus=pool["num_cpus"],
            fn_constructor_kwargs=dict(folder=folder, device=pool["device"], threads=pool["threads"],
                                       known=stage.known, ids=stage.ids, store=stage.store))
        written = encoded.map_batches(write_units, batch_size=1, num_cpus=WRITE_CPUS, fn_kwargs=dict(folder=folder))
        counts = _execute(written)
    except KeyboardInterrupt:
        raise stopped(store, work, stage.ids.run) from None
    except ray.exceptions.RayError as error:
        raise stopped(store, work, stage.ids.run, f"the Ray run failed ({str(error).strip().splitlines()[-1]})") \
            from None
    finally:
        if started_here:
            ray.shutdown()
    return counts
