"""The indexer: sources in, a valid index directory out; exact vectors; resume, append, refusals."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pytest
import torch

from compsearch.indexer import build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.info import format_info, index_info
from compsearch.indexer.known_files import KnownFiles
from compsearch.indexer.manifest import Counts
from compsearch.indexer.ranking_on_the_fly import sample_source
from compsearch.indexer.store import SKIPPED, IndexStore
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.align import Aligner, AlignerMeta, save_aligner
from compsearch.mapping.decompose import decompose
from compsearch.mapping.align.cache import build_cache
from compsearch.mapping.chunk_store import DamagedFileError
from compsearch.mapping.errors import CompsearchError, Interrupted
from compsearch.mapping.images import PathListSource, read_image
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.properties import builtin_property
from compsearch.mapping.rank import PropertyRanking, Ranking
from compsearch.indexer.artifacts import encoder_for_build
from tests.mapping.test_align_cache import KEY as CACHE_KEY
from tests.mapping.test_align_cache import Encoder as CacheEncoder

MODEL = "deit_tiny_patch16_224"
SETTINGS = IndexSettings(batch_size=8, workers=0, chunk_size=8, progress=False)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    torch.manual_seed(0)
    return load_model(MODEL, pretrained=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 world renders: ``train/*.png`` and ``train.parquet`` (factors as columns)."""
    folder = tmp_path_factory.mktemp("world")
    write_split(folder, get_split("train"), 20, size=48, progress=False)
    return folder


@pytest.fixture(scope="module")
def artifacts(model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random aligner into a 16-d 'CLIP' space and a ranking naming two properties' components."""
    folder = tmp_path_factory.mktemp("artifacts")
    names = decompose(model.model, torch.zeros(1, 3, 224, 224), model_name=MODEL).names
    generator = torch.Generator().manual_seed(1)
    meta = AlignerMeta(MODEL, model.weights_id, "fake-clip", "fake", names, 192, 16, "blocks.7")
    aligner = Aligner(meta, torch.randn(len(names), 192, 16, generator=generator) * 0.05,
                      torch.randn(16, generator=generator))
    aligner_path = save_aligner(aligner, folder / "test.aligner")

    def ranked(name: str, top: list[str], templates: list[str]) -> PropertyRanking:
        rest = [n for n in names if n not in top]
        return PropertyRanking(name, "text", ["a", "b"], top + rest, [1.0] * len(names), [1.0] * len(names), len(top),
                               templates=templates)

    ranking = Ranking(MODEL, model.weights_id, str(aligner_path), "fake-clip", "blocks.7", 10, [
        ranked("colour", ["blocks.11.attn.h0", "blocks.10.mlp"], []),  # as a ranking saved before templates were kept
        ranked("shape", ["blocks.9.attn.h2", "blocks.11.mlp", "init"], ["the outline of a {} thing."]),
    ])
    return aligner_path, ranking.save(folder / "ranking.json")


def _index(model: LoadedModel, images, out: Path, artifacts=None, mode="resume", settings=SETTINGS):
    aligner, ranking = artifacts or (None, None)
    built = encoder_for_build(model, out, aligner, ranking)
    return Indexer(out, built.encoder, settings, built.provenance).run(images, mode)


def test_world_folder_indexes_into_a_valid_directory(model, world, artifacts, tmp_path) -> None:
    out = tmp_path / "index"
    summary = _index(model, world / "train", out, artifacts)
    assert summary.images == summary.added == 20 and summary.skipped == 0
    store = IndexStore(out)
    manifest = store.read_manifest()
    assert set(manifest.indexes) == {"full", "colour", "shape"}
    assert manifest.properties["shape"].components == ["blocks.9.attn.h2", "blocks.11.mlp", "init"]
    # text queries embed a property's values as the ranking scored them, else with the built-in templates
    assert manifest.properties["shape"].templates == ["the outline of a {} thing."]
    assert manifest.properties["colour"].templates == list(builtin_property("colour").templates)
    assert manifest.aligner.id and manifest.ranking.id and manifest.encoder.space == "clip"
    table = ds.dataset(out / "shards").to_table()  # readable without compsearch
    assert sorted(table.column("id").to_pylist()) == list(range(20))
    for name in ("full", "colour", "shape"):
        index = faiss.read_index(str(out / f"{name}.faiss"))
        assert index.ntotal == 20 and index.d == 16
        assert table.column(f"vector.{name}").type.list_size == 16
    info = index_info(out)
    assert info["images"] == 20 and info["properties"]["colour"]["k"] == 2
    assert "colour" in format_info(info)


def test_index_vectors_equal_a_direct_decomposition(model, world, artifacts, tmp_path) -> None:
    """Independent path: decompose + map each component by hand, sum the ranked ones."""
    out = tmp_path / "index"
    _index(model, world / "train", out, artifacts)
    aligner = encoder_for_build(model, out, *artifacts).encoder.aligner
    ranking = Ranking.load(artifacts[1])
    table = ds.dataset(out / "shards").to_table()
    rows = table.to_pylist()
    chosen = rows[:3]
    pixels = torch.stack([model.preprocess(read_image(row["path"])) for row in chosen])
    parts = decompose(model.model, pixels, "blocks.7", model_name=MODEL)
    mapped = aligner.map_components(parts.contributions)  # (images, components, 16)
    expected = {"full": mapped.sum(1)}
    for prop in ("colour", "shape"):
        positions = [parts.names.index(name) for name in ranking.top(prop)]
        expected[prop] = mapped[:, positions].sum(1)
    for name, vectors in expected.items():
        stored = torch.tensor(np.array([row[f"vector.{name}"] for row in chosen]), dtype=torch.float32)
        torch.testing.assert_close(stored, vectors.float(), rtol=2e-3, atol=2e-3)  # fp16 storage
        index = faiss.read_index(str(out / f"{name}.faiss"))
        for row, vector in zip(chosen, vectors):
            reconstructed = torch.tensor(index.reconstruct(row["id"]))
            torch.testing.assert_close(reconstructed, torch.nn.functional.normalize(vector.float(), dim=0),
                                       rtol=2e-3, atol=2e-3)


def test_model_space_index_without_aligner_holds_z(model, world, tmp_path) -> None:
    out = tmp_path / "index"
    _index(model, world / "train", out)
    table = ds.dataset(out / "shards").to_table()
    row = table.to_pylist()[0]
    z = model.encode_images(model.preprocess(read_image(row["path"]))[None])[0]
    torch.testing.assert_close(torch.tensor(row["vector.full"], dtype=torch.float32), z, rtol=2e-3, atol=5e-3)
    assert IndexStore(out).read_manifest().encoder.space == "model"


def test_parquet_and_csv_and_list_sources_carry_metadata(model, world, tmp_path) -> None:
    out = tmp_path / "parquet"
    _index(model, world / "train.parquet", out)  # the world's own labels: a `file` column
    table = ds.dataset(out / "shards").to_table()
    assert table.num_rows == 20 and {"shape", "colour", "pattern", "scene"} <= set(table.column_names)
    csv = tmp_path / "list.csv"
    pcsv.write_csv(ds.dataset(world / "train.parquet").to_table().rename_columns(
        ["path" if name == "file" else name for name in ds.dataset(world / "train.parquet").schema.names]), csv)
    shutil.copytree(world / "train", tmp_path / "train")
    _index(model, csv, tmp_path / "csv")
    assert ds.dataset(tmp_path / "csv" / "shards").to_table().num_rows == 20
    listing = tmp_path / "list.txt"
    listing.write_text("# world renders\n" + "\n".join(f"train/{i:06d}.png" for i in range(5)) + "\n\n")
    _index(model, listing, tmp_path / "list")
    assert IndexStore(tmp_path / "list").read_manifest().counts.images == 5


def test_append_adds_only_new_files_keeps_ids_and_removes_nothing(model, world, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    files = sorted((world / "train").glob("*.png"))
    for path in files[:12]:
        shutil.copy(path, images / path.name)
    out = tmp_path / "index"
    _index(model, images, out)
    before = {row["key"]: row["id"] for row in ds.dataset(out / "shards").to_table().to_pylist()}
    for path in files[12:]:
        shutil.copy(path, images / path.name)
    (images / files[0].name).unlink()  # an append never removes
    summary = _index(model, images, out, mode="append")
    assert (summary.added, summary.unchanged, summary.removed) == (8, 11, 0)
    after = {row["key"]: row["id"] for row in ds.dataset(out / "shards").to_table().to_pylist()}
    assert len(after) == 20 and all(after[key] == image_id for key, image_id in before.items())
    assert len(set(after.values())) == 20
    assert faiss.read_index(str(out / "full.faiss")).ntotal == 20


def test_identical_files_are_indexed_once(model, world, tmp_path) -> None:
    images = tmp_path / "images"
    shutil.copytree(world / "train", images)
    shutil.copy(images / "000003.png", images / "zz-copy.png")
    out = tmp_path / "index"
    summary = _index(model, images, out)
    assert summary.added == 20 and summary.duplicates == 1
    duplicates = IndexStore(out).read_table("duplicates").to_pylist()
    shard_ids = {row["key"]: row["id"] for row in ds.dataset(out / "shards").to_table().to_pylist()}
    assert duplicates[0]["key"] == "zz-copy.png" and duplicates[0]["duplicate_of"] == shard_ids["000003.png"]


def _sharded(model, images: Path, out: Path, shard: tuple[int, int], mode: str = "resume"):
    return _index(model, images, out, mode=mode, settings=dataclasses.replace(SETTINGS, chunk_size=3, shard=shard))


def test_shards_split_a_run_and_a_plain_run_builds_the_indexes(model, world, tmp_path) -> None:
    images = world / "train"  # 20 images: chunks of 3 → 7 chunks, dealt 0,3,6 / 1,4 / 2,5
    unsharded = tmp_path / "whole"
    _index(model, images, unsharded, settings=dataclasses.replace(SETTINGS, chunk_size=3))
    out = tmp_path / "sharded"
    first = _sharded(model, images, out, (1, 3))
    assert (first.shard, first.added, first.chunks_left) == ("1/3", 6, 5) and not list(out.glob("*.faiss"))
    assert IndexStore(out).read_manifest().runs[0].status == "running"
    assert _sharded(model, images, out, (1, 3)).added == 0  # a finished shard rerun has nothing to do
    for shard in (0, 2):
        _sharded(model, images, out, (shard, 3))
    summary = _sharded(model, images, out, (0, 1))  # the plain run: nothing to encode, indexes built
    assert summary.added == 0 and summary.images == 20 and summary.shard is None
    table = ds.dataset(out / "shards").to_table().sort_by("id")
    expected = ds.dataset(unsharded / "shards").to_table().sort_by("id")
    assert table.column("id").to_pylist() == list(range(20)) and table.column("key") == expected.column("key")
    assert table.column("vector.full") == expected.column("vector.full")  # the same vectors as one process
    assert faiss.read_index(str(out / "full.faiss")).ntotal == 20
    assert IndexStore(out).read_manifest().runs[0].status == "complete"


def test_the_plain_run_after_shards_finishes_their_run_though_a_file_failed_in_it(model, world, tmp_path) -> None:
    images = Path(shutil.copytree(world / "train", tmp_path / "images"))
    (images / "broken.png").write_bytes(b"not an image")
    os.utime(images / "broken.png", (1e9, 1e9))  # older than the run (which records its start to the second)
    out = tmp_path / "sharded"
    for shard in (0, 1):
        _sharded(model, images, out, (shard, 2))
    summary = _sharded(model, images, out, (0, 1))  # the broken file failed in this very run: not tried again
    runs = IndexStore(out).read_manifest().runs
    assert [(run.run, run.status) for run in runs] == [(0, "complete")] and summary.run == 0
    assert summary.images == 20 and IndexStore(out).read_table(SKIPPED).column("path").to_pylist() == [
        str(images / "broken.png")]


def test_a_shard_that_read_the_manifest_before_another_opened_the_run_agrees_with_it(model, world, tmp_path) -> None:
    """Shards started together: one may read the manifest before the other records the run, and
    plan after the other has written chunks of it. It must plan, and number ids, as the other did."""
    images = world / "train"
    out = tmp_path / "index"
    _sharded(model, images, out, (0, 2))
    store = IndexStore(out)
    manifest = store.read_manifest()
    manifest.runs.clear()  # what shard 1 read: no run yet, while shard 0's chunks are on disk
    store.write_manifest(manifest)
    _sharded(model, images, out, (1, 2))
    summary = _sharded(model, images, out, (0, 1))
    assert summary.images == 20 and summary.duplicates == 0
    assert sorted(ds.dataset(out / "shards").to_table().column("id").to_pylist()) == list(range(20))
    assert faiss.read_index(str(out / "full.faiss")).ntotal == 20


def test_a_file_two_shards_both_indexed_is_kept_once_by_the_plain_run(model, world, tmp_path, monkeypatch) -> None:
    images = tmp_path / "images"
    shutil.copytree(world / "train", images)
    shutil.copy(images / "000000.png", images / "000004-copy.png")  # chunk 0 and chunk 1 hold the same bytes
    out = tmp_path / "index"
    monkeypatch.setattr(build, "known_files", lambda *_: KnownFiles())  # as if both shards ran at once
    _sharded(model, images, out, (0, 2))
    _sharded(model, images, out, (1, 2))
    monkeypatch.undo()
    assert ds.dataset(out / "shards").to_table().num_rows == 21
    summary = _sharded(model, images, out, (0, 1))
    assert summary.images == 20 and summary.duplicates == 1
    ids = {row["key"]: row["id"] for row in ds.dataset(out / "shards").to_table().to_pylist()}
    assert "000004-copy.png" not in ids and len(ids) == 20
    assert IndexStore(out).read_table("duplicates").to_pylist() == [{
        "key": "000004-copy.png", "path": str(images / "000004-copy.png"),
        "sha256": hashlib.sha256((images / "000000.png").read_bytes()).hexdigest(),
        "duplicate_of": ids["000000.png"]}]
    assert faiss.read_index(str(out / "full.faiss")).ntotal == 20


def test_overwrite_is_refused_with_shards(model, world, tmp_path) -> None:
    with pytest.raises(CompsearchError, match="delete"):
        _sharded(model, world / "train", tmp_path / "index", (0, 2), mode="overwrite")


def test_an_index_built_with_another_model_or_ranking_is_refused(model, world, artifacts, tmp_path) -> None:
    out = tmp_path / "index"
    _index(model, world / "train", out)
    with pytest.raises(CompsearchError, match="another model, weights, aligner or ranking"):
        _index(model, world / "train", out, artifacts, mode="append")
    summary = _index(model, world / "train", out, artifacts, mode="overwrite")
    assert summary.images == 20 and IndexStore(out).read_manifest().encoder.space == "clip"


def test_out_folder_with_other_files_is_refused(model, world, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CompsearchError, match="not an index"):
        _index(model, world / "train", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unreadable_files_are_skipped_with_their_reason(model, world, tmp_path) -> None:
    images = tmp_path / "images"
    shutil.copytree(world / "train", images)
    (images / "empty.png").write_bytes(b"")
    (images / "text.jpg").write_text("not an image")
    (images / "cut.png").write_bytes((images / "000001.png").read_bytes()[:200])
    out = tmp_path / "index"
    summary = _index(model, images, out)
    assert summary.added == 20 and summary.skipped == 3
    skipped = {row["key"]: row["reason"] for row in IndexStore(out).read_table("skipped").to_pylist()}
    assert set(skipped) == {"empty.png", "text.jpg", "cut.png"} and all(skipped.values())


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from compsearch.search.launch import main; main()", *args]


def test_indexing_restores_the_callers_thread_count(model, world, tmp_path) -> None:
    before = torch.get_num_threads()
    settings = IndexSettings(batch_size=8, workers=0, threads=1 if before > 1 else 2, progress=False)
    _index(model, world / "train", tmp_path / "index", settings=settings)
    assert torch.get_num_threads() == before


def test_killed_run_resumes_with_every_image_exactly_once(world, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for copy in range(3):  # 60 distinct files (renders differ in name only; shift one pixel row to differ)
        for path in sorted((world / "train").glob("*.png")):
            data = bytearray(path.read_bytes())
            (images / f"{copy}-{path.name}").write_bytes(bytes(data) + bytes([copy]))  # distinct sha256
    out = tmp_path / "index"
    command = _cli("index", str(images), "--out", str(out), "--model", MODEL, "--random-init",
                   "--chunk-size", "4", "--batch-size", "2", "--workers", "0", "--json")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / "shards").glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list((out / "shards").glob("part-*.parquet")))
    assert 3 <= written < 15, "the run must be killed mid-way for this test to mean anything"
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    table = ds.dataset(out / "shards").to_table()
    ids, keys = table.column("id").to_pylist(), table.column("key").to_pylist()
    assert len(set(ids)) == 60 and sorted(keys) == sorted(p.name for p in images.iterdir())  # each image once
    assert min(ids) == 0 and max(ids) < 120  # the rerun's ids follow the killed run's reserved 60
    assert faiss.read_index(str(out / "full.faiss")).ntotal == 60


def test_shards_started_together_from_the_command_line_hold_every_image_once(world, tmp_path) -> None:
    out = tmp_path / "index"
    command = _cli("index", str(world / "train"), "--out", str(out), "--model", MODEL, "--random-init",
                   "--chunk-size", "3", "--workers", "0")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    shards = [subprocess.Popen([*command, "--shard", f"{i}/2"], env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(2)]  # racing on the manifest
    for shard in shards:
        stdout, stderr = shard.communicate(timeout=300)
        assert shard.returncode == 0, stderr
        assert "run the same command without --shard" in stdout
    assert not list(out.glob("*.faiss"))
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert sorted(ds.dataset(out / "shards").to_table().column("id").to_pylist()) == list(range(20))
    assert faiss.read_index(str(out / "full.faiss")).ntotal == 20
    wrong = subprocess.run([*command, "--shard", "2/2"], env=environment, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "I must be 0 to N-1" in wrong.stderr


@pytest.mark.slow
def test_imagenet_sample_indexes_with_real_weights(deit_tiny_weights, imagenet_sample, tmp_path) -> None:
    """The 800 sample photos through the CLI with real DeiT-tiny: all in, each its own nearest neighbour."""
    out = tmp_path / "index"
    finished = subprocess.run(_cli("index", str(imagenet_sample), "--out", str(out), "--model", MODEL,
                                   "--weights", str(deit_tiny_weights), "--workers", "2", "--json"),
                              capture_output=True, text=True, timeout=1800)
    assert finished.returncode == 0, finished.stderr
    store = IndexStore(out)
    assert store.read_manifest().counts == Counts(images=800, skipped=0, duplicates=0)
    index = faiss.read_index(str(out / "full.faiss"))
    ids = np.arange(0, 800, 37)
    queries = np.stack([index.reconstruct(int(i)) for i in ids])
    _, found = index.search(queries, 1)
    assert (found[:, 0] == ids).all()


@pytest.mark.timeout(300)
def test_awkward_corpus_every_good_file_in_every_bad_one_skipped_with_its_reason(model, tmp_path) -> None:
    from tests.corpus import write_awkward_corpus

    good, bad = write_awkward_corpus(tmp_path / "corpus")
    out = tmp_path / "index"
    settings = IndexSettings(batch_size=8, workers=2, chunk_size=8, progress=False)
    _index(model, tmp_path / "corpus", out, settings=settings)
    store = IndexStore(out)
    rows = store.read_table().to_pylist()
    duplicates = store.read_table("duplicates").to_pylist()
    indexed = {row["key"]: (row["width"], row["height"]) for row in rows}
    assert set(indexed) | {row["key"] for row in duplicates} == set(good)
    assert all(indexed[key] == size for key, size in good.items() if key in indexed)
    skipped = {row["key"]: row["reason"] for row in store.read_table("skipped").to_pylist()}
    assert set(skipped) == set(bad)
    for key, reason in bad.items():
        assert reason in skipped[key], (key, skipped[key])
    assert len({row["id"] for row in rows}) == len(rows) == faiss.read_index(str(out / "full.faiss")).ntotal


def test_properties_ranked_on_the_fly_with_the_model_as_its_own_clip(fixture_clip, world, tmp_path) -> None:
    from compsearch.indexer.api import build_index

    clip = f"local-dir:{fixture_clip}"
    out = tmp_path / "index"
    summary = build_index(world / "train", out, clip, properties=["colour=red,green,blue", "shape=circle,star"],
                          clip=clip, settings=SETTINGS, sample=12)
    manifest = IndexStore(out).read_manifest()
    assert summary.images == 20 and set(manifest.indexes) == {"full", "colour", "shape"}
    assert manifest.properties["colour"].components and "bias" not in manifest.properties["colour"].components
    assert (out / "artifacts" / "ranking.json").is_file() and manifest.aligner.relative_path.startswith("artifacts")


def test_properties_without_ranking_or_clip_are_refused(model, world, tmp_path) -> None:
    from compsearch.indexer.api import build_index

    with pytest.raises(CompsearchError, match="--clip"):
        build_index(world / "train", tmp_path / "index", MODEL, pretrained=False, properties=["colour"],
                    settings=SETTINGS)


def test_the_on_the_fly_ranking_sample_is_every_nth_listed_image() -> None:
    listing = PathListSource([Path(f"/photos/{i}.jpg") for i in range(103)], "a listing")
    sample = sample_source(listing, 10)
    assert [record.path for record in sample.records()] == [Path(f"/photos/{i}.jpg") for i in range(0, 100, 10)]
    assert (sample.description, sample_source(listing, 1000).description) == (
        "one image in 10 of a listing", "every image of a listing")


INTERRUPTED = (r"^interrupted: (\d+) of (\d+) images are done and kept in (.+) — "
               r"rerun the same command to continue where it stopped$")


def test_ctrl_c_in_the_indexer_and_the_feature_cache_is_one_error_and_a_rerun_finishes(
        model, world, tmp_path, monkeypatch) -> None:
    built = encoder_for_build(model, tmp_path / "index")
    encode = built.encoder.encode_and_store  # what the encode stage calls (vectors and component store)
    calls = []

    def interrupted_on_the_third_batch(pixels, store):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(pixels, store)

    monkeypatch.setattr(built.encoder, "encode_and_store", interrupted_on_the_third_batch)
    settings = dataclasses.replace(SETTINGS, batch_size=4, chunk_size=4)
    with pytest.raises(Interrupted) as indexing:
        Indexer(tmp_path / "index", built.encoder, settings, built.provenance).run(world / "train")
    with pytest.raises(Interrupted) as caching:  # the cache's encoder stops on its third batch of 2
        build_cache(tmp_path / "cache", world / "train", CacheEncoder(interrupt_after=3), CACHE_KEY, chunk_size=4,
                    batch_size=2, progress=False)
    for error, folder, chunks_done in ((indexing, tmp_path / "index", 2), (caching, tmp_path / "cache", 1)):
        kept, listed, where = re.match(INTERRUPTED, str(error.value)).groups()
        assert (int(kept), int(listed), where) == (4 * chunks_done, 20, str(folder))
    monkeypatch.undo()
    summary = Indexer(tmp_path / "index", built.encoder, settings, built.provenance).run(world / "train")
    assert summary.added == 12 and summary.images == 20  # the two written chunks were not redone


def test_a_damaged_manifest_or_shard_is_one_error_naming_the_file(model, world, tmp_path) -> None:
    out = tmp_path / "index"
    _index(model, world / "train", out)
    shard = IndexStore(out).shard_paths()[1]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, as a disk may leave it
    with pytest.raises(DamagedFileError, match=rf"^cannot read {shard} \(.*\) — rebuild the index"):
        IndexStore(out).read_table()
    (out / "manifest.json").write_text("{")
    with pytest.raises(DamagedFileError, match=rf"^cannot read {out / 'manifest.json'} \(.*\) — rebuild the index"):
        _index(model, world / "train", out)
