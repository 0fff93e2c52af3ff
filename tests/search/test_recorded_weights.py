"""An index records the weights file its model was loaded from, so a reference-image query
finds the weights without --weights, also after the index and its weights move together."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import safetensors.torch
import timm

from compsearch import search
from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.info import format_info, index_info
from compsearch.indexer.store import IndexStore
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.models import load_model

MODEL = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/weights/deit.safetensors`` (random, but a file), ``root/world``, and ``root/index``
    built in the model's own space from the model loaded with that file."""
    root = tmp_path_factory.mktemp("recorded-weights")
    (root / "weights").mkdir()
    safetensors.torch.save_file(timm.create_model(MODEL).state_dict(), root / "weights" / "deit.safetensors")
    write_split(root / "world", get_split("train"), 8, size=48, progress=False)
    model = load_model(MODEL, weights=root / "weights" / "deit.safetensors")
    built = encoder_for_build(model, root / "index")
    settings = IndexSettings(batch_size=8, workers=0, chunk_size=8, progress=False)
    Indexer(root / "index", built.encoder, settings, built.provenance).run(root / "world" / "train")
    return root


def test_the_manifest_records_the_weights_file(root: Path) -> None:
    entry = IndexStore(root / "index").read_manifest().model_weights
    assert Path(entry.path) == (root / "weights" / "deit.safetensors").resolve()
    assert entry.relative_path == "../weights/deit.safetensors"
    assert entry.id == load_model(MODEL, weights=root / "weights" / "deit.safetensors").weights_id
    assert f"{entry.path}), decomposed from" in format_info(index_info(root / "index"))  # `compsearch info` shows it


def test_an_image_query_finds_the_recorded_weights(root: Path, tmp_path: Path) -> None:
    query = root / "world" / "train" / "000005.png"
    best = search.open_index(root / "index").search(image=query, k=1).results[0]
    assert best.id == 5 and best.score == pytest.approx(1.0, abs=1e-4)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    original = root / "weights" / "deit.safetensors"
    original.rename(original.with_suffix(".away"))  # only the moved copy is left: found beside the moved index
    try:
        best = search.open_index(moved / "index").search(image=query, k=1).results[0]
    finally:
        original.with_suffix(".away").rename(original)
    assert best.id == 5 and best.score == pytest.approx(1.0, abs=1e-4)
