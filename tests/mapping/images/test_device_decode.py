"""JPEGs decoded by torchvision and preprocessed as tensors (the GPU path, run here on the CPU)
agree with the PIL path; anything else, and anything the decoder refuses, takes the PIL path."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from compsearch.mapping.images import iter_batches
from compsearch.mapping.images.device_decode import decode_jpegs, tensor_transform
from compsearch.mapping.models import load_model
from tests.corpus import write_awkward_corpus

# Measured on the ImageNet sample photos (normalised units, ≈ 0.8/255 of a pixel on average):
# PIL resizes in 8 bits with its own bicubic kernel, torchvision in floating point.
MEAN_TOLERANCE = 0.01
Z_COSINE = 0.9999


def _photos(folder: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for index in range(count):  # smooth gradients plus noise: photo-like, with EXIF rotation on one
        y, x = np.mgrid[0:300 + 20 * index, 0:400]
        pixels = np.stack([x % 256, y % 256, (x + y) % 256], -1) + rng.integers(0, 40, (*y.shape, 3))
        image = PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        exif = PIL.Image.Exif()
        if index == 0:
            exif[0x0112] = 6
        image.save(folder / f"{index}.jpg", quality=90, exif=exif.tobytes())
    PIL.Image.new("RGB", (64, 48), "red").save(folder / "not-a-jpeg.png")
    return folder


@pytest.fixture(scope="module")
def model():
    return load_model("deit_tiny_patch16_224", pretrained=False)


def test_tensor_path_agrees_with_pil(model, tmp_path) -> None:
    folder = _photos(tmp_path / "photos")
    pil = list(iter_batches(folder, [model.preprocess], batch_size=8))[0]
    tensor = list(iter_batches(folder, [model.preprocess], batch_size=8, jpeg_device="cpu"))[0]
    assert [r.key for r in pil.records] == [r.key for r in tensor.records]
    assert pil.sizes == tensor.sizes and pil.sizes[0] == (300, 400)  # EXIF orientation applied by both
    assert pil.sha256 == tensor.sha256
    difference = (pil.pixels[0] - tensor.pixels[0]).abs()
    assert difference.mean() < MEAN_TOLERANCE
    cosine = torch.nn.functional.cosine_similarity(model.encode_images(pil.pixels[0]),
                                                   model.encode_images(tensor.pixels[0]))
    assert cosine.min() > Z_COSINE


def test_a_refused_jpeg_falls_back_to_pil_and_bad_files_are_skipped(model, tmp_path) -> None:
    good, bad = write_awkward_corpus(tmp_path / "corpus")  # CMYK JPEG, truncated JPEG, bombs, …
    keys = lambda batches: ({r.key for b in batches for r in b.records},  # noqa: E731
                            {r.key for b in batches for r, _ in b.skipped})
    pil = keys(list(iter_batches(tmp_path / "corpus", [model.preprocess], batch_size=8)))
    tensor = keys(list(iter_batches(tmp_path / "corpus", [model.preprocess], batch_size=8, jpeg_device="cpu")))
    assert tensor == pil and pil[1] == set(bad)


def test_a_transform_without_tensor_equivalent_keeps_the_pil_path(model, tmp_path) -> None:
    assert tensor_transform(model.preprocess) is not None
    assert tensor_transform(lambda image: torch.zeros(3)) is None
    folder = _photos(tmp_path / "photos", 2)
    batch = list(iter_batches(folder, [lambda image: torch.tensor(image.size)], batch_size=8, jpeg_device="cpu"))[0]
    assert batch.pixels[0].tolist() == [[300, 400], [400, 320], [64, 48]]


def test_decoder_refusal_is_none_not_an_exception() -> None:
    encoded = io.BytesIO()
    PIL.Image.new("RGB", (32, 32), "blue").save(encoded, "JPEG")
    decoded = decode_jpegs([encoded.getvalue(), b"\xff\xd8\xff" + b"\x00" * 20], "cpu")
    assert decoded[0].shape == (3, 32, 32) and decoded[1] is None
