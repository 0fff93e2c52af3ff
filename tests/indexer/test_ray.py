"""``--backend ray``: on a local Ray cluster (127.0.0.1, started and stopped here) the index
holds the same ids, rows and vectors as a single-process run; a worker that dies is retried
without duplicates; a rerun finishes an interrupted run."""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from compsearch.indexer import ray_runner
from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, IndexSummary, Indexer
from compsearch.indexer.store import DUPLICATES, SHARDS, IndexStore
from compsearch.mapping.errors import CompsearchError, Interrupted
from compsearch.mapping.models import load_model

MODEL = "deit_tiny_patch16_224"
IN_PROCESS = IndexSettings(batch_size=3, workers=0, threads=1, chunk_size=4, progress=False)
ON_RAY = dataclasses.replace(IN_PROCESS, backend="ray")


def _start_cluster() -> None:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="error", log_to_driver=False)


@pytest.fixture(scope="module")
def cluster() -> None:
    ray = pytest.importorskip("ray", reason="the Ray backend's tests need Ray: pip install 'compsearch[ray]'")
    _start_cluster()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights in a file, so each actor loads the very model the driver has."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / f"{MODEL}.safetensors"
    save_file(load_model(MODEL, pretrained=False).model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """13 small images in 4 units (chunks of 4), one unreadable, and a copy of chunk 0's first
    image in chunk 2: units running at once each index it, the finish keeps the smallest id."""
    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for number in range(12):
        Image.fromarray(generator.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{number:02d}.png")
    shutil.copy(folder / "00.png", folder / "09-copy.png")
    (folder / "05-broken.png").write_bytes(b"not an image")
    return folder


def _build(weights: Path, images: Path, out: Path, settings: IndexSettings) -> IndexSummary:
    artifacts = encoder_for_build(load_model(MODEL, weights=weights), out)
    return Indexer(out, artifacts.encoder, settings, artifacts.provenance).run(images)


def _contents(out: Path, same_ids: bool) -> tuple[dict, dict]:
    """Rows (sorted by id, vectors included) and duplicates (sorted by key) of an index; without
    ``same_ids``, rows sorted by key and ids left out (a rerun gives new files ids of its own)."""
    rows = IndexStore(out).dataset(SHARDS).to_table()
    duplicates = IndexStore(out).read_table(DUPLICATES).sort_by("key")
    if not same_ids:
        key_of = dict(zip(rows.column("id").to_pylist(), rows.column("key").to_pylist()))
        rows = rows.drop_columns(["id"])
        duplicates = duplicates.drop_columns(["duplicate_of"]).append_column(
            "duplicate_of", pa.array([key_of[i] for i in duplicates.column("duplicate_of").to_pylist()]))
    return rows.sort_by("id" if same_ids else "key").to_pydict(), duplicates.to_pydict()


def _assert_same_index(out: Path, reference: Path, same_ids: bool = True) -> None:
    rows, duplicates = _contents(out, same_ids)
    expected_rows, expected_duplicates = _contents(reference, same_ids)
    assert duplicates == expected_duplicates
    assert set(rows) == set(expected_rows)
    for column, values in expected_rows.items():
        if column.startswith("vector."):  # float16 as stored; threads may differ in the last bit of float32
            np.testing.assert_allclose(np.array(rows[column], np.float32), np.array(values, np.float32),
                                       rtol=2e-3, atol=2e-3)
        else:
            assert rows[column] == values, column
    manifest, expected = IndexStore(out).read_manifest(), IndexStore(reference).read_manifest()
    assert manifest.counts == expected.counts
    assert {name: entry.ntotal for name, entry in manifest.indexes.items()} == \
        {name: entry.ntotal for name, entry in expected.indexes.items()}


@pytest.fixture(scope="module")
def reference(weights: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "index"
    _build(weights, images, out, IN_PROCESS)
    return out


def test_a_ray_run_equals_the_single_process_run(cluster, weights, images, reference, tmp_path) -> None:
    summary = _build(weights, images, tmp_path / "index", ON_RAY)
    _assert_same_index(tmp_path / "index", reference)
    assert (summary.images, summary.skipped, summary.duplicates) == (12, 1, 1)  # the copy: moved by the finish


@pytest.mark.slow  # a second Ray run: a minute on a loaded 2-core machine
def test_a_ray_rerun_after_the_folder_changed_equals_the_single_process_rerun(cluster, weights, images,
                                                                             tmp_path) -> None:
    """The same plan (files added, removed, moved, edited) on Ray: the same counts, ids and rows."""
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    for name in ("process", "ray"):
        _build(weights, folder, tmp_path / name, IN_PROCESS)
    (folder / "01.png").unlink()
    (folder / "sub").mkdir()
    (folder / "02.png").rename(folder / "sub" / "02.png")
    generator = np.random.default_rng(1)
    for name in ("03.png", "20-new.png"):  # an edit in place (a later mtime), a new file
        Image.fromarray(generator.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    later = (folder / "04.png").stat().st_mtime + 5
    os.utime(folder / "03.png", (later, later))
    shutil.copy(folder / "04.png", folder / "21-copy.png")  # a new copy of an indexed file
    summaries = {name: _build(weights, folder, tmp_path / name, settings)
                 for name, settings in (("process", IN_PROCESS), ("ray", ON_RAY))}
    counts = {name: (s.added, s.removed, s.moved, s.changed, s.unchanged, s.skipped, s.duplicates, s.images)
              for name, s in summaries.items()}
    assert counts["ray"] == counts["process"] == (1, 1, 1, 1, 10, 1, 1, 12)
    _assert_same_index(tmp_path / "ray", tmp_path / "process")


@pytest.mark.slow  # each Ray test takes a minute on a loaded 2-core machine; the equality test stays fast
def test_a_worker_that_dies_is_retried_without_duplicates(cluster, weights, images, reference, tmp_path,
                                                          monkeypatch) -> None:
    marker = tmp_path / "died"

    class DiesOnItsFirstUnit(ray_runner.EncodeUnits):  # defined here: Ray ships it by value
        def __call__(self, units):
            if not marker.exists():
                marker.touch()
                os._exit(1)  # the worker process is gone mid-unit, as when killed
            return super().__call__(units)

    monkeypatch.setattr(ray_runner, "EncodeUnits", DiesOnItsFirstUnit)
    _build(weights, images, tmp_path / "index", ON_RAY)
    assert marker.exists()
    _assert_same_index(tmp_path / "index", reference)


@pytest.mark.slow
def test_a_rerun_finishes_an_interrupted_ray_run(cluster, weights, images, reference, tmp_path, monkeypatch) -> None:
    class FailsOnChunkTwo(ray_runner.EncodeUnits):
        def __call__(self, units):
            chunks = [batches[0].chunk for batches in units["batches"]]
            if 2 in chunks:
                raise RuntimeError("this unit fails")
            return super().__call__(units)

    out = tmp_path / "index"
    with monkeypatch.context() as patch:
        patch.setattr(ray_runner, "EncodeUnits", FailsOnChunkTwo)
        with pytest.raises(Interrupted, match="the Ray run failed.*images are done and kept"):
            _build(weights, images, out, ON_RAY)
    assert 2 not in IndexStore(out).done_chunks(0)
    # The same command again is a new process with a cluster of its own: Ray does not stop the
    # failed run's actors mid-task (ray-project/ray#24948), and on this 2-core cluster they would
    # hold the cores the rerun waits for.
    import ray

    ray.shutdown()
    _start_cluster()
    _build(weights, images, out, ON_RAY)
    _assert_same_index(out, reference, same_ids=False)


def test_a_randomly_initialised_model_is_refused(weights, images, tmp_path) -> None:
    encoder = encoder_for_build(load_model(MODEL, pretrained=False), tmp_path / "index").encoder
    with pytest.raises(CompsearchError, match="weights file"):
        Indexer(tmp_path / "index", encoder, ON_RAY).run(images)


def test_a_cluster_without_the_cores_a_run_needs_is_named_not_waited_on_silently(caplog) -> None:
    pool = dict(size=1, num_cpus=1)
    for free, warned in ((2.0, False), (1.0, True)):  # 1 for the encoder, half a core each to decode and write
        caplog.clear()
        ray_runner._warn_if_busy(SimpleNamespace(available_resources=lambda: {"CPU": free}), pool)
        assert ("needs 2 to start" in caplog.text) is warned


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(CompsearchError, match=r"compsearch\[ray\]"):
        ray_runner.import_ray()
