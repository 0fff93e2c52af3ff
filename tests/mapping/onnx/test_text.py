"""The fixture CLIP's text tower exported to ONNX embeds texts as the CLIP does, and a tower
file that is not this CLIP's is never used."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from compsearch.mapping.models import LoadedModel
from compsearch.mapping.onnx.export import save_text_tower
from compsearch.mapping.onnx.text import open_text_tower
from compsearch.mapping.onnx.towers import FORMAT_KEY, TEXT_TOWER

TEXTS = ["red", "a blue striped square", "a photo of a green star on grass.", "turquoise?", "a " * 40, ""]


@pytest.fixture(scope="module")
def saved(clip: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tower")
    assert save_text_tower(clip, folder)
    return folder


def test_the_tower_embeds_texts_as_the_clip_does(clip: LoadedModel, saved: Path) -> None:
    tower = open_text_tower(saved, clip.name, clip.weights_id)
    assert tower is not None and [p.name for p in saved.iterdir()] == [TEXT_TOWER]  # no temporary left
    embedded = tower.encode_text(TEXTS)
    assert embedded.dtype == np.float32
    np.testing.assert_allclose(embedded, clip.encode_text(TEXTS).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)


def test_no_tower_is_none(clip: LoadedModel, tmp_path: Path) -> None:
    assert open_text_tower(tmp_path, clip.name, clip.weights_id) is None


def test_another_clips_tower_is_not_used(clip: LoadedModel, saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "compsearch"):
        assert open_text_tower(saved, clip.name, "0123456789abcdef") is None
    assert "exported for another clip_weights_id" in caplog.text and "'0123456789abcdef'" in caplog.text
    assert "written anew" in caplog.text


def test_a_tower_of_another_format_is_not_used(clip: LoadedModel, saved: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    model = onnx.load(str(saved / TEXT_TOWER))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, FORMAT_KEY: "0"})
    onnx.save(model, str(tmp_path / TEXT_TOWER))
    with caplog.at_level(logging.WARNING, "compsearch"):
        assert open_text_tower(tmp_path, clip.name, clip.weights_id) is None
    assert f"another {FORMAT_KEY}" in caplog.text


def test_a_damaged_tower_is_not_used(clip: LoadedModel, saved: Path, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    data = (saved / TEXT_TOWER).read_bytes()
    (tmp_path / TEXT_TOWER).write_bytes(data[:len(data) // 2])
    with caplog.at_level(logging.WARNING, "compsearch"):
        assert open_text_tower(tmp_path, clip.name, clip.weights_id) is None
    assert f"cannot read {tmp_path / TEXT_TOWER}" in caplog.text and len(caplog.records) == 1
