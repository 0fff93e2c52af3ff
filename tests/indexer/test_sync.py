"""An index follows its collection: a rerun adds, removes, moves and re-encodes; ids are a
file's for good; Ctrl-C and kills lose nothing, whatever the folder did meanwhile; awkward
names and unlistable folders never stop a run."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

import pyarrow.parquet as pq

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import Indexer
from compsearch.indexer.integrity import full_check
from compsearch.indexer.store import STORE, IndexStore
from compsearch.mapping.errors import Interrupted
from compsearch.mapping.images import sources
from compsearch.search.errors import UnknownImageError
from compsearch.search.index import SearchIndex
from compsearch.search.stored import StoredRows
from tests.indexer.test_index import SETTINGS, _cli, model, world  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _copy(world: Path, images: Path, count: int, start: int = 0) -> list[Path]:
    images.mkdir(exist_ok=True)
    files = sorted((world / "train").glob("*.png"))[start:start + count]
    return [Path(shutil.copy(path, images / path.name)) for path in files]


class Counting:
    """An indexer whose encoder counts the images it encodes (and may stop on a call)."""

    def __init__(self, model, out: Path, interrupt_on: int | None = None, settings=SETTINGS) -> None:
        built = encoder_for_build(model, out)
        self.encoded = 0
        self.calls = 0
        encode = built.encoder.encode_and_store  # what the encode stage calls (vectors and component store)

        def counted(pixels, store):
            self.calls += 1
            if self.calls == interrupt_on:
                raise KeyboardInterrupt
            self.encoded += len(pixels)
            return encode(pixels, store)

        built.encoder.encode_and_store = counted
        self.indexer = Indexer(out, built.encoder, settings, built.provenance)

    def run(self, images: Path, mode: str = "resume"):
        return self.indexer.run(images, mode)


def _held(out: Path) -> dict[str, int]:
    """path → id of every row, checking each vector index holds exactly the rows' ids, each
    shard's component store part exactly its rows, and every recorded checksum."""
    store = IndexStore(out)
    shards = store.shard_paths()
    for shard in shards:
        stored = pq.read_table(out / STORE / shard.name, columns=["id"]).column("id").to_pylist()
        assert stored == pq.read_table(shard, columns=["id"]).column("id").to_pylist()
    assert sorted(path.name for path in (out / STORE).iterdir()) == [path.name for path in shards]  # no orphan
    report = full_check(out)
    assert report.recorded and report.damage == []  # `compsearch verify` passes
    rows = store.read_table(columns=["id", "path"]).to_pylist()
    ids = sorted(row["id"] for row in rows)
    index = faiss.read_index(str(out / "full.faiss"))
    faiss_ids = sorted(faiss.vector_to_array(faiss.downcast_index(index).id_map).tolist()) \
        if hasattr(faiss.downcast_index(index), "id_map") else list(range(index.ntotal))
    assert index.ntotal == len(rows) and faiss_ids == ids
    assert len(set(ids)) == len(ids)
    return {row["path"]: row["id"] for row in rows}


def _edit(path: Path, other: Path) -> None:
    """``path`` given ``other``'s bytes and a later mtime (an edit within the second of the build shows too)."""
    later = os.stat(path).st_mtime + 5
    shutil.copy(other, path)
    os.utime(path, (later, later))


def _current(images: Path) -> set[str]:
    return {os.path.abspath(path) for path in images.rglob("*.png")}


def test_a_rerun_adds_removes_moves_and_re_encodes_only_what_changed(model, world, tmp_path) -> None:
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 12)
    Counting(model, out).run(images)
    before = _held(out)
    _copy(world, images, 3, start=12)  # added
    files[0].unlink()  # removed
    (images / "sub").mkdir()
    files[1].rename(images / "sub" / "moved.png")  # moved: same bytes, same id
    shutil.copy(sorted((world / "train").glob("*.png"))[19], files[2])  # changed: same path, new bytes
    later = os.stat(files[2]).st_mtime + 5
    os.utime(files[2], (later, later))
    os.utime(files[4], (later, later))  # touched only: hashed, found unchanged
    indexer = Counting(model, out)
    summary = indexer.run(images)
    assert (summary.added, summary.removed, summary.moved, summary.changed) == (3, 1, 1, 1)
    assert summary.unchanged == 9 and indexer.encoded == 4  # the new files and the changed one
    after = _held(out)
    assert set(after) == _current(images) and summary.images == 14
    assert after[str(images / "sub" / "moved.png")] == before[str(files[1])]
    assert after[str(files[2])] not in before.values()  # re-encoded under a new id
    assert after[str(files[2])] > max(before.values())  # ids only grow: none reused
    gone = before[str(files[0])]
    with pytest.raises(UnknownImageError):  # a removed image never comes back from the rows
        StoredRows(IndexStore(out)).records([gone])
    again = Counting(model, out)
    runs = len(IndexStore(out).read_manifest().runs)
    summary = again.run(images)  # a rerun of an up-to-date index: exit 0, nothing read but stats, nothing written
    assert (summary.added, summary.removed, summary.moved, summary.changed, summary.unchanged) == (0, 0, 0, 0, 14)
    assert again.encoded == 0 and _held(out) == after and len(IndexStore(out).read_manifest().runs) == runs


def test_every_kind_of_update_keeps_the_index_sound_and_removed_images_out_of_every_search(
        model, world, tmp_path) -> None:
    """After each update alone (a delete, a move, an edit, an append) the index verifies, and
    no search of any of its images returns a removed one."""
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 8)
    Counting(model, out).run(images)
    removed: set[int] = set()

    def removed_by(change):
        before = _held(out)
        change()
        summary = Counting(model, out).run(images)
        after = _held(out)
        assert set(after) == _current(images)
        removed.update(set(before.values()) - set(after.values()))
        index = SearchIndex(out)
        for image_id in after.values():
            found = {result.id for result in index.search(id=image_id, k=len(after) + len(removed)).results}
            assert found <= set(after.values()) and not found & removed
        return summary

    assert removed_by(files[0].unlink).removed == 1
    assert removed_by(lambda: files[1].rename(images / "renamed.png")).moved == 1
    assert removed_by(lambda: _edit(files[2], sorted((world / "train").glob("*.png"))[15])).changed == 1
    _copy(world, images, 2, start=8)
    summary = Counting(model, out).run(images, "append")
    assert (summary.added, summary.removed) == (2, 0) and set(_held(out)) == _current(images)
    assert len(removed) == 2  # the deleted file's id and the edited file's old one


def test_a_run_stopped_by_ctrl_c_mid_chunk_keeps_its_images_and_a_rerun_after_changes_holds_the_folder(
        model, world, tmp_path) -> None:
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 14)
    settings = dataclasses.replace(SETTINGS, batch_size=4, chunk_size=1024)  # one chunk: Ctrl-C lands mid-chunk
    with pytest.raises(Interrupted, match="interrupted: 8 of 14 images are done"):
        Counting(model, out, interrupt_on=3, settings=settings).run(images)
    kept = IndexStore(out).read_table(columns=["id", "path"]).to_pylist()
    assert len(kept) == 8  # two batches of 4 were encoded: kept although the chunk was not done
    kept_ids = {row["id"] for row in kept}
    files[0].unlink()  # one the stopped run indexed
    files[13].unlink()  # one it had not reached
    _copy(world, images, 3, start=14)
    indexer = Counting(model, out, settings=settings)
    summary = indexer.run(images)
    held = _held(out)
    assert set(held) == _current(images) and len(held) == 15  # exactly the folder, each image once
    assert indexer.encoded == 15 - 7 and summary.removed == 1  # the 7 kept were not redone
    assert not kept_ids & (set(held.values()) - {row["id"] for row in kept})  # no id given twice


def test_a_killed_run_and_a_folder_change_lose_nothing(world, tmp_path) -> None:
    """``kill -9`` mid-run (a real process), then files added and deleted, then a rerun."""
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 16)
    command = _cli("index", str(images), "--out", str(out), "--model", "deit_tiny_patch16_224", "--random-init",
                   "--device", "cpu", "--batch-size", "2", "--chunk-size", "2", "--workers", "0", "--json")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "shards"
    while process.poll() is None and len(list(shards.glob("part-*"))) < 2:
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert len(list(shards.glob("part-*"))) < 8, "the run must be killed mid-way for this test to mean anything"
    files[1].unlink()
    files[15].unlink()
    _copy(world, images, 2, start=16)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = _held(out)
    assert set(held) == _current(images) and len(held) == 16


def test_dry_run_prints_the_plan_and_changes_nothing(model, world, tmp_path) -> None:
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 6)
    Counting(model, out).run(images)
    files[0].unlink()
    _copy(world, images, 1, start=6)
    manifest = (out / "manifest.json").read_text()
    result = subprocess.run(_cli("index", str(images), "--out", str(out), "--model", "deit_tiny_patch16_224",
                                 "--dry-run"), capture_output=True, text=True, check=True)
    assert "1 new, 0 changed, 0 moved, 1 removed, 5 unchanged" in result.stdout
    assert f"removed: {files[0]}" in result.stdout
    assert (out / "manifest.json").read_text() == manifest


def test_names_that_are_not_utf8_and_unlistable_folders_are_skipped_with_their_reason(
        model, world, tmp_path, monkeypatch) -> None:
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 4)
    odd = os.fsencode(images) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    os.rename(os.fsencode(files[0]), odd)
    (images / "locked").mkdir()
    shutil.copy(files[1], images / "locked" / "x.png")
    scandir = os.scandir

    def refusing(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(sources.os, "scandir", refusing)
    for _ in range(2):  # and again on a rerun
        summary = Counting(model, out).run(images)
        skipped = IndexStore(out).read_table("skipped").to_pylist()
        reasons = {row["key"]: row["reason"] for row in skipped}
        assert summary.images == 3 and len(skipped) == 2
        assert "not valid UTF-8" in reasons["caf\\xe9.png"]
        assert "cannot be listed (Permission denied)" in reasons["locked"]


def test_list_file_lines_keep_their_spaces_and_any_bytes(model, world, tmp_path) -> None:
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 3)
    spaced = files[0].rename(images / " spaced .png")
    os.rename(os.fsencode(files[1]), os.fsencode(images) + b"/\xff.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"images/ spaced .png\nimages/\xff.png\r\n# a comment\n\nimages/" + files[2].name.encode() + b"\n")
    summary = Counting(model, out).run(listing)
    rows = IndexStore(out).read_table(columns=["key", "path"]).to_pylist()
    assert summary.images == 2 and {row["path"] for row in rows} == {str(spaced), str(files[2])}
    assert "not valid UTF-8" in IndexStore(out).read_table("skipped").to_pylist()[0]["reason"]
    assert np.all(np.array([row["key"] for row in rows]) != "")


def test_images_given_in_memory_are_kept_by_a_rerun(model, world, tmp_path) -> None:
    """No file to follow: a rerun over the same images neither removes nor repeats them."""
    from compsearch.mapping.images import MemorySource, read_image

    renders = sorted((world / "train").glob("*.png"))[:3]
    source = MemorySource([(path.name, read_image(path)) for path in renders])
    out = tmp_path / "index"
    Counting(model, out).run(source)
    summary = Counting(model, out).run(source)
    assert (summary.images, summary.removed, summary.added) == (3, 0, 0)
    assert sorted(IndexStore(out).read_table(columns=["key"]).column("key").to_pylist()) == [p.name for p in renders]


def test_a_file_skipped_before_and_unchanged_leaves_the_index_up_to_date_until_it_is_fixed(
        model, world, tmp_path) -> None:
    images, out = tmp_path / "images", tmp_path / "index"
    files = _copy(world, images, 4)
    broken = images / "broken.png"
    broken.write_bytes(b"not an image")
    earlier = os.stat(broken).st_mtime - 10  # written before the run started (not within its first second)
    os.utime(broken, (earlier, earlier))
    Counting(model, out).run(images)
    runs = len(IndexStore(out).read_manifest().runs)
    again = Counting(model, out)
    summary = again.run(images)  # it would fail again: nothing to do, nothing written
    assert (summary.skipped, summary.unchanged, again.encoded) == (1, 4, 0)
    assert len(IndexStore(out).read_manifest().runs) == runs
    shutil.copy(sorted((world / "train").glob("*.png"))[10], broken)  # fixed: modified after the run started
    later = time.time() + 5
    os.utime(broken, (later, later))
    summary = Counting(model, out).run(images)  # fixed since: retried, indexed, no longer skipped
    assert (summary.added, summary.skipped, summary.images) == (1, 0, 5)
    assert IndexStore(out).read_table("skipped").num_rows == 0 and set(_held(out)) == _current(images)
