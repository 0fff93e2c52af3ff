"""Index and query vectors are computed in the same precision: the build records the one it
used (bf16 under autocast on CUDA, fp32 elsewhere) and image queries use it on any device.

bf16 here runs on the CPU (autocast works there too), so the GPU's case is tested without one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from compsearch import search
from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.info import index_info
from compsearch.indexer.store import IndexStore
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.encoder import PropertyEncoder, default_precision
from compsearch.mapping.images import read_image
from compsearch.mapping.models import LoadedModel, load_model

MODEL = "deit_tiny_patch16_224"
IMAGES = 4
# Stored vectors are float16, which moves a self-score by ~2e-8; a query computed in fp32
# against bf16 vectors lands ~3e-5 away. The bound tells the two apart.
SAME_WAY = 5e-6
SETTINGS = IndexSettings(batch_size=IMAGES, workers=0, chunk_size=IMAGES, progress=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    weights = tmp_path_factory.mktemp("precision-weights") / "deit.safetensors"
    safetensors.torch.save_file(timm.create_model(MODEL).state_dict(), weights)  # random, but a file
    return load_model(MODEL, weights=weights)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("precision-world")
    write_split(root, get_split("train"), IMAGES, size=48, progress=False)
    return root / "train"


@pytest.fixture(scope="module")
def bf16_index(model: LoadedModel, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("precision") / "index"
    built = encoder_for_build(model, folder, precision="bf16")  # as a CUDA build would make it
    Indexer(folder, built.encoder, SETTINGS, built.provenance).run(images)
    return folder


def test_a_build_computes_in_bf16_on_cuda_and_fp32_elsewhere(model: LoadedModel, tmp_path: Path) -> None:
    assert (default_precision("cuda"), default_precision("cpu")) == ("bf16", "fp32")
    assert encoder_for_build(model, tmp_path).encoder.identity().precision == "fp32"  # this model is on the CPU


def test_an_indexed_image_queried_by_example_finds_itself(bf16_index: Path, model: LoadedModel, images: Path) -> None:
    assert IndexStore(bf16_index).read_manifest().encoder.precision == index_info(bf16_index)["precision"] == "bf16"
    index = search.open_index(bf16_index, model=model)
    assert index.encoder.precision == "bf16"  # on the CPU: the index's precision, not the device's default
    for image_id, path in enumerate(sorted(images.glob("*.png"))):
        best = index.search(image=path, k=1).results[0]
        assert best.id == image_id and best.score >= 0.999 and 1 - best.score < SAME_WAY, (path, best.score)


def test_a_query_in_another_precision_would_land_elsewhere(bf16_index: Path, model: LoadedModel, images: Path) -> None:
    """The control for the bound above: the same image encoded in fp32 is measurably off."""
    index = search.open_index(bf16_index, model=model)
    path = sorted(images.glob("*.png"))[0]
    vector = PropertyEncoder(model, precision="fp32").encode(model.preprocess(read_image(path))[None])["full"][0]
    score = float(np.dot(torch.nn.functional.normalize(vector, dim=0).numpy(), index.stored_vectors("full", [0])[0]))
    assert 1 - score > SAME_WAY


def test_a_later_run_computes_as_the_first_did(bf16_index: Path, model: LoadedModel, images: Path) -> None:
    built = encoder_for_build(model, bf16_index)  # fp32 by default on the CPU: not refused, made bf16
    summary = Indexer(bf16_index, built.encoder, SETTINGS, built.provenance).run(images, "append")
    assert summary.unchanged == IMAGES and built.encoder.precision == "bf16"
    assert IndexStore(bf16_index).read_manifest().encoder.precision == "bf16"
