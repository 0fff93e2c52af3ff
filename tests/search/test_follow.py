"""A server follows its index: after the indexer has changed the directory, requests see the new
rows (no restart); a run in progress and an index that fails to open leave the old one served."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.manifest import read_manifest, write_manifest
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.models import load_model
from compsearch.search.server.app import create_app
from compsearch.search.server.follow import FollowedIndex
from tests.search.conftest import ServedIndex, running


def test_a_finished_change_is_served_a_run_in_progress_and_a_failed_open_are_not(
        served_index: ServedIndex, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(served_index.folder, tmp_path / "index"))
    opened: list[object] = []
    failing = False

    def build(previous):
        if failing:
            raise CompsearchError("damaged")
        opened.append(previous)
        return SimpleNamespace(count=len(opened)), len(opened)

    followed = FollowedIndex(folder, build)
    assert followed.current() == followed.current() == 1 and opened == [None]  # nothing changed: not reopened
    manifest = read_manifest(folder)
    running_run = dataclasses.replace(manifest.runs[-1], run=manifest.runs[-1].run + 1, status="running")
    write_manifest(folder, dataclasses.replace(manifest, runs=[*manifest.runs, running_run]))
    assert followed.current() == 1  # a run in progress: not yet
    write_manifest(folder, manifest)  # the run finished (here: as it was before it)
    assert followed.current() == 2 and opened[1].count == 1  # reopened once, handed the index served so far
    assert followed.current() == 2
    failing = True
    write_manifest(folder, manifest)
    assert followed.current() == 2  # fails to open: the old one kept ...
    failing = False
    assert followed.current() == 2  # ... and not tried again until the manifest changes again
    write_manifest(folder, manifest)
    assert followed.current() == 3


def test_a_running_server_answers_from_the_index_after_a_sync(served_index: ServedIndex, fixture_clip: Path,
                                                             tmp_path: Path) -> None:
    collection = tmp_path / "photos"
    collection.mkdir()
    images = sorted(path for path in served_index.collection.glob("*.png") if not path.is_symlink())
    for path in images[:10]:
        shutil.copy2(path, collection / path.name)
    root = served_index.folder.parent
    clip = load_model(f"local-dir:{fixture_clip}")

    def index() -> None:
        built = encoder_for_build(clip, tmp_path / "index", root / "identity.safetensors", root / "ranking.json")
        Indexer(tmp_path / "index", built.encoder, IndexSettings(batch_size=16, workers=0, progress=False),
                built.provenance).run(collection)

    index()
    with running(create_app(tmp_path / "index", cache_dir=tmp_path / "cache")) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/api/info").json()["images"] == 10
        gone = client.post("/api/search", json={"id": 0, "k": 1}).json()["results"][0]
        (collection / Path(gone["path"]).name).unlink()
        for path in images[10:13]:
            shutil.copy2(path, collection / path.name)
        index()  # the folder changed: one removed, three added
        assert client.get("/api/info").json()["images"] == 12
        assert client.post("/api/search", json={"id": 0, "k": 1}).status_code == 404  # its image left
        found = client.post("/api/search", json={"id": 10, "k": 12, "property": "colour"}).json()["results"]
        assert found[0]["id"] == 10 and len(found) == 12 and 0 not in {result["id"] for result in found}
