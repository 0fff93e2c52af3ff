"""Decoding: every awkward-but-valid kind to the right RGB pixels, every broken kind refused
with its reason (the kinds come from :mod:`tests.corpus`)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from compsearch.mapping.errors import ImageReadError
from compsearch.mapping.images import decode_image, preprocess_batch, read_image, read_image_bytes
from compsearch.mapping.images.decode import ALPHA_BACKGROUND, to_rgb
from compsearch.mapping.models import load_model
from tests.corpus import ALPHA, ALPHA_COLOUR, FIRST_FRAME, RAMP_WIDTH, bomb_png, write_awkward_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]], dict[str, str]]:
    folder = tmp_path_factory.mktemp("corpus")
    good, bad = write_awkward_corpus(folder)
    return folder, good, bad


def _pixels(folder: Path, name: str) -> np.ndarray:
    image = read_image(folder / name)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_every_good_kind_decodes_to_rgb_at_its_displayed_size(corpus) -> None:
    folder, good, _ = corpus
    for name, size in good.items():
        image = read_image(folder / name)
        assert (image.mode, image.size) == ("RGB", size), name


@pytest.mark.parametrize("name", ["gray16.png", "gray16_big_endian.tif", "gray32.tif", "float.tif"])
def test_high_bit_depth_grey_is_scaled_not_clipped(corpus, name: str) -> None:
    row = _pixels(corpus[0], name)[0, :, 0]
    # The 16-bit ramp 0 → 65535 stays a ramp 0 → 255 (clipping made everything past 255/65535 white).
    expected = np.linspace(0, 255, RAMP_WIDTH)
    assert np.abs(row - expected).max() <= 1
    assert (np.diff(row) >= 0).all()


def test_alpha_is_composited_on_the_fixed_background(corpus) -> None:
    folder = corpus[0]
    share = ALPHA / 255
    expected = [round(c * share + b * (1 - share)) for c, b in zip(ALPHA_COLOUR, ALPHA_BACKGROUND)]
    assert np.abs(_pixels(folder, "alpha.png")[0, 0] - expected).max() <= 1
    for transparent in ("grey_alpha.png", "palette_transparent.png"):
        assert (_pixels(folder, transparent) == ALPHA_BACKGROUND).all(), transparent


def test_palette_cmyk_and_one_bit(corpus) -> None:
    folder = corpus[0]
    assert (_pixels(folder, "palette.png") == (0, 0, 255)).all()
    assert (np.abs(_pixels(folder, "cmyk.jpg") - (0, 255, 255)) <= 2).all()
    assert (_pixels(folder, "bilevel.png") == 255).all()
    assert (_pixels(folder, "bilevel_group4.tif") == 0).all()


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp", "animated.png", "multipage.tif"])
def test_animations_and_multi_page_files_give_their_first_frame(corpus, name: str) -> None:
    assert (np.abs(_pixels(corpus[0], name) - FIRST_FRAME) <= 3).all()


def test_exif_orientation_is_applied(corpus) -> None:
    pixels = _pixels(corpus[0], "rotated.jpg")  # stored 40×30 with a red top row, rotated 90° clockwise
    assert pixels.shape[:2] == (40, 30)
    assert pixels[:, -1, 0].min() > 200 and pixels[:, 0, 0].max() < 50


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_keeps_the_pixels() -> None:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 6), (0, 128, 0)).save(buffer, "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert decode_image(buffer.getvalue()).size == (8, 6)


def test_every_bad_kind_is_refused_with_its_reason(corpus) -> None:
    folder, _, bad = corpus
    assert {"empty.jpg", "truncated.jpg", "corrupt.png", "not_an_image.jpg", "bomb.png", "folder.jpg",
            "dangling.jpg", "pipe.png"} <= set(bad)
    for name, reason in bad.items():
        with pytest.raises(ImageReadError, match=reason):
            read_image(folder / name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")


def test_byte_limit(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    PIL.Image.new("RGB", (64, 64)).save(path)
    size = path.stat().st_size
    assert len(read_image_bytes(path, max_bytes=size)) == size
    with pytest.raises(ImageReadError, match="larger than the limit"):
        read_image_bytes(path, max_bytes=size - 1)


def test_pixel_limit_is_checked_before_decoding() -> None:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (300, 200)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), max_pixels=300 * 200).size == (300, 200)
    with pytest.raises(ImageReadError, match="too large.*60,000 pixels"):
        decode_image(buffer.getvalue(), "upload", max_pixels=300 * 200 - 1)
    # The header of a bomb is all there is to read: 10^10 pixels are refused, not decoded.
    with pytest.raises(ImageReadError, match="too large"):
        decode_image(bomb_png(), "bomb", max_pixels=10**11)


def test_a_jpeg_may_decode_at_a_reduced_scale() -> None:
    encoded = io.BytesIO()
    PIL.Image.effect_noise((1024, 768), 40).convert("RGB").save(encoded, "JPEG")
    assert decode_image(encoded.getvalue()).size == (1024, 768)
    reduced = decode_image(encoded.getvalue(), at_least=(200, 200))
    assert reduced.mode == "RGB" and reduced.size == (512, 384)  # 1/2: 1/4 would leave 192 < 200 rows


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pils_global_limit_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (100, 100)).save(buffer, "PNG")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100 * 100 - 1)
    with pytest.raises(ImageReadError, match="too large"):
        decode_image(buffer.getvalue())


def test_in_memory_images_convert_like_files() -> None:
    converted = to_rgb(PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert converted.mode == "RGB" and converted.getpixel((0, 0)) == ALPHA_BACKGROUND


def test_preprocess_batch_uses_the_models_transform(tmp_path: Path) -> None:
    loaded = load_model("deit_tiny_patch16_224", pretrained=False)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    PIL.Image.new("RGB", (300, 200), (128, 128, 128)).save(paths[0])
    PIL.Image.new("L", (64, 64), 128).save(paths[1])
    batch = preprocess_batch(paths, loaded)
    assert batch.shape == (2, 3, 224, 224)
    # A flat grey image comes out as the model's own per-channel normalisation of 128.
    mean, std = (torch.tensor(loaded.model.pretrained_cfg[key]) for key in ("mean", "std"))
    expected = ((128 / 255 - mean) / std)[None, :, None, None].expand_as(batch)
    torch.testing.assert_close(batch, expected, atol=1e-3, rtol=0)
