"""An index's image encoder exported to ONNX gives the torch encoder's vectors, on pixels
prepared without torch exactly as the model's own transform prepares them."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from compsearch.indexer.world import get_split
from compsearch.indexer.world.render import render_image
from compsearch.mapping.align.run import identity_aligner
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.onnx.export import pixel_spec, probe_images, save_image_tower
from compsearch.mapping.onnx.image import open_image_tower
from compsearch.mapping.onnx.towers import IMAGE_TOWER


@pytest.fixture(scope="module")
def encoder(clip: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> PropertyEncoder:
    """The fixture CLIP, identity-aligned, with two properties of planted components."""
    folder = tmp_path_factory.mktemp("renders")
    for i in range(4):
        render_image(get_split("train").item(i), size=64).save(folder / f"{i}.png")
    aligner = identity_aligner(clip, folder)
    names = aligner.component_names
    return PropertyEncoder(clip, aligner, {"colour": names[-4:-1], "pattern": names[1:4]}, aligner_id="planted")


def _images() -> list[PIL.Image.Image]:
    """Renders and probe-like images of odd shapes, as the query side reads them (RGB)."""
    renders = [render_image(get_split("test").item(i), size=size) for i, size in enumerate((64, 97, 40))]
    return [image.convert("RGB") for image in renders] + [image.rotate(90, expand=True) for image in probe_images()[:2]]


@pytest.mark.parametrize("model", ["clip", "deit_tiny_patch16_224"])
def test_the_pixels_equal_the_models_transform(model: str, clip: LoadedModel) -> None:
    loaded = clip if model == "clip" else load_model(model, pretrained=False)
    spec = pixel_spec(loaded.preprocess)
    assert spec is not None
    for image in _images():
        np.testing.assert_allclose(spec(image), loaded.preprocess(image).numpy(), atol=1e-6)


def test_a_transform_it_cannot_reproduce_gives_no_spec(clip: LoadedModel) -> None:
    from torchvision import transforms

    assert pixel_spec(transforms.Compose([transforms.Grayscale(3), *clip.preprocess.transforms])) is None
    assert pixel_spec(lambda image: torch.zeros(3, 8, 8)) is None


def test_the_tower_gives_the_encoders_vectors(encoder: PropertyEncoder, tmp_path: Path) -> None:
    identity = encoder.identity()
    assert save_image_tower(encoder, identity, tmp_path)
    tower = open_image_tower(tmp_path, identity)
    assert tower is not None and tower.names == ["full", "colour", "pattern"]
    images = _images()
    vectors = tower.encode_images(images)
    pixels = torch.stack([encoder.model.preprocess(image) for image in images])
    for name, expected in encoder.encode(pixels).items():
        np.testing.assert_allclose(vectors[name], torch.nn.functional.normalize(expected, dim=-1).numpy(), atol=1e-5)


def test_another_encoders_tower_is_not_used(encoder: PropertyEncoder, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    identity = encoder.identity()
    assert save_image_tower(encoder, identity, tmp_path)
    other = dataclasses.replace(identity, properties={**identity.properties, "colour": identity.properties["pattern"]})
    with caplog.at_level(logging.WARNING, "compsearch"):
        assert open_image_tower(tmp_path, other) is None
    assert f"{tmp_path / IMAGE_TOWER} was exported for another encoder" in caplog.text


def test_bf16_vectors_get_no_tower(clip: LoadedModel, encoder: PropertyEncoder, tmp_path: Path) -> None:
    bf16 = PropertyEncoder(clip, encoder.aligner, encoder.properties, aligner_id="planted", precision="bf16")
    assert not save_image_tower(bf16, bf16.identity(), tmp_path) and not (tmp_path / IMAGE_TOWER).exists()
