"""The index checks itself: recorded sizes, counts and checksums; each kind of damage one clear
error naming the file and its repair; ``--repair``; one writer per directory."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.integrity import DamagedIndexError, full_check
from compsearch.indexer.lock import IndexLockedError, writing
from compsearch.indexer.manifest import MANIFEST
from compsearch.indexer.repair import repair_index
from compsearch.indexer.store import IndexStore
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.chunk_store import DamagedFileError
from compsearch.mapping.images import PathListSource
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.search.index import open_index, read_faiss_index
from tests.test_cli import run_cli

SETTINGS = IndexSettings(batch_size=8, workers=0, chunk_size=8, progress=False)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    torch.manual_seed(0)
    return load_model("deit_tiny_patch16_224", pretrained=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("world")
    write_split(folder, get_split("train"), 20, size=48, progress=False)
    return folder


def _indexer(model: LoadedModel, out: Path, settings: IndexSettings = SETTINGS) -> Indexer:
    built = encoder_for_build(model, out, None, None)
    return Indexer(out, built.encoder, settings, built.provenance)


@pytest.fixture(scope="module")
def built(model, world, tmp_path_factory) -> Path:
    """A finished 20-image index (3 shard parts) to copy and damage."""
    out = tmp_path_factory.mktemp("built") / "index"
    _indexer(model, out).run(world / "train")
    return out


@pytest.fixture
def index(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "index"))


@pytest.fixture
def cli(monkeypatch, capsys):
    """``compsearch ARGS…`` in-process: (exit code, stdout, stderr)."""
    return lambda *args: run_cli(monkeypatch, capsys, *map(str, args))


def _top_ids(folder: Path) -> list[int]:
    return [result.id for result in open_index(folder).search(id=3, k=5).results]


def test_finish_records_every_file_and_verify_finds_it_sound(index, cli) -> None:
    files = json.loads((index / MANIFEST).read_text())["files"]
    parts = sorted(name for name in files if name.startswith("shards/"))
    assert parts == [f"shards/part-000-00000{c}.parquet" for c in range(3)] and "full.faiss" in files
    assert [files[name]["count"] for name in parts] == [8, 8, 4] and files["full.faiss"]["count"] == 20
    for name, record in files.items():
        content = (index / name).read_bytes()
        assert (record["bytes"], record["sha256"]) == (len(content), hashlib.sha256(content).hexdigest())
    code, out, _ = cli("verify", index)
    assert code == 0 and out.count("\n") == 1 and "sound" in out


def test_flipped_bytes_in_a_shard_are_named_by_verify(index, cli) -> None:
    shard = index / "shards" / "part-000-000001.parquet"
    content = bytearray(shard.read_bytes())
    content[len(content) // 3] ^= 0xFF  # inside the data pages: the footer, and so an open, still reads
    shard.write_bytes(bytes(content))
    open_index(index)  # the cheap check cannot see it (sizes and counts agree) ...
    code, out, err = cli("verify", index)  # ... the checksum does
    assert code == 2 and "shards/part-000-000001.parquet: has other bytes" in out and "--append" in out
    assert err.startswith("error: 1 damaged files") and "Traceback" not in err


def test_a_faiss_file_from_another_index_is_refused_at_open(model, world, index, tmp_path, cli) -> None:
    other = tmp_path / "other"
    _indexer(model, other).run(PathListSource(sorted((world / "train").glob("*.png"))[:3]))
    shutil.copy(other / "full.faiss", index / "full.faiss")
    with pytest.raises(DamagedIndexError, match=rf"^{index / 'full.faiss'} has \d+ bytes, the manifest records \d+ "
                                                rf"— `compsearch index IMAGES --out {index} --repair` rebuilds it"):
        open_index(index)
    assert "full.faiss: has" in cli("verify", index)[1]


def test_a_truncated_faiss_file_is_one_error_and_repair_rebuilds_it(index, cli) -> None:
    before = _top_ids(index)
    faiss_file = index / "full.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:200])
    with pytest.raises(DamagedIndexError, match=r"full.faiss has 200 bytes.* --repair` rebuilds it"):
        open_index(index)
    with pytest.raises(DamagedFileError, match=rf"^cannot read {faiss_file} .* --repair` rebuilds it"):
        read_faiss_index(faiss_file, {})  # read without the check: still one error naming it, no traceback
    report = repair_index(index)
    assert (report.rebuilt, report.removed) == (["full.faiss"], [])
    assert _top_ids(index) == before and cli("verify", index)[0] == 0


def test_a_deleted_shard_is_one_error_at_open_and_repair_then_append_restores_it(model, world, index, cli) -> None:
    before = _top_ids(index)
    (index / "shards" / "part-000-000001.parquet").unlink()
    with pytest.raises(DamagedIndexError, match=rf"^{index}/shards/part-000-000001.parquet is missing — .*--repair` "
                                                r"removes it, then .*--append` encodes its images again"):
        open_index(index)
    code, out, err = cli("index", world / "train", "--out", index, "--model", "x", "--repair")  # loads no model
    assert code == 0, err
    assert "removed shards/part-000-000001.parquet" in out and "--append" in out
    assert not (index / "store" / "part-000-000001.parquet").exists()  # its store part went with it
    repaired = open_index(index)
    assert repaired.count == 12 and repaired.search(id=3, k=5).results  # queries work again
    summary = _indexer(model, index).run(world / "train", "append")
    assert (summary.added, summary.images) == (8, 20)
    assert cli("verify", index)[0] == 0
    assert sorted(open_index(index).rows.table.column("key").to_pylist()) == sorted(
        p.name for p in (world / "train").glob("*.png"))
    assert len(_top_ids(index)) == len(before)


def test_an_index_from_before_files_were_recorded_opens_and_repair_records_them(index) -> None:
    data = json.loads((index / MANIFEST).read_text())
    data["format_version"] = 3
    recorded = data.pop("files")
    (index / MANIFEST).write_text(json.dumps(data))
    assert IndexStore(index).read_manifest().files is None
    open_index(index).search(id=0, k=3)
    report = full_check(index)
    assert report.files == 1 and not report.damage and "no checksums recorded" in report.summary()
    assert repair_index(index).recorded == 4  # 3 shards and full.faiss
    content = {name: (record["bytes"], record["sha256"], record["count"])  # the copy has other inodes
               for name, record in json.loads((index / MANIFEST).read_text())["files"].items()}
    assert content == {name: (record["bytes"], record["sha256"], record["count"]) for name, record in recorded.items()}
    assert full_check(index).recorded


def test_a_second_writer_is_refused_naming_the_first(model, world, tmp_path) -> None:
    out = tmp_path / "index"
    with writing(out):
        with pytest.raises(IndexLockedError, match=r"is being written by another compsearch run \(pid \d+ on .* since"):
            _indexer(model, out).run(world / "train")
        with pytest.raises(IndexLockedError):
            with writing(out, shared=True):
                pass
    with writing(out, shared=True), writing(out, shared=True):  # the shards of one run write at once
        with pytest.raises(IndexLockedError, match="a shard"):
            _indexer(model, out).run(world / "train")  # the plain run waits for every shard
    with writing(out):  # released
        pass


def test_a_run_in_another_process_holds_the_lock_until_it_ends(model, world, tmp_path) -> None:
    out = tmp_path / "index"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from compsearch.indexer.lock import writing\n"
                               f"with writing(pathlib.Path({str(out)!r})):\n print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(IndexLockedError, match=rf"\(pid {holder.pid} on "):
            _indexer(model, out).run(world / "train")
    finally:
        holder.communicate("")
    with writing(out):  # the holder's end released it
        pass


def test_a_finish_hashes_only_the_files_written_since_the_last_one(index, monkeypatch) -> None:
    import pyarrow.parquet as pq

    from compsearch.indexer import integrity

    store = IndexStore(index)
    manifest = store.read_manifest()
    integrity.record_files(store, manifest)  # a copied directory: new inodes, every file hashed once
    hashed: list[str] = []
    real = integrity.sha256
    monkeypatch.setattr(integrity, "sha256", lambda path: hashed.append(path.name) or real(path))
    integrity.record_files(store, manifest)
    assert hashed == []
    shard = store.shard_paths()[1]
    store.rewrite_shard(shard, pq.read_table(shard).slice(0, 3))
    integrity.record_files(store, manifest)
    assert hashed == [shard.name] and manifest.files[f"shards/{shard.name}"].count == 3
