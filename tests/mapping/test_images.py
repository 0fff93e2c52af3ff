"""read_image / preprocess_batch: RGB out, one ImageReadError per kind of bad file."""
from __future__ import annotations

import io
from pathlib import Path

import PIL.Image
import pytest
import torch

from mapping.errors import ImageReadError
from mapping.images import (
    FolderSource,
    ListFileSource,
    MemorySource,
    TableSource,
    collection_root,
    decode_image,
    preprocess_batch,
    read_image,
)
from mapping.models import load_model


def _write(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), **save_options) -> Path:
    bands = PIL.Image.getmodebands(mode)
    PIL.Image.new(mode, size, 128 if bands == 1 else (128,) * bands).save(path, **save_options)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_any_mode_reads_as_rgb(tmp_path: Path, mode: str) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image = read_image(_write(tmp_path / f"image{suffix}", mode))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = _write(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_image(path).size == (30, 40)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "whole.jpg", size=(256, 256))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(truncated)


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "huge.png", size=(300, 300))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)  # 300² > 2 × the limit
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path)


def test_max_pixels_refuses_from_the_header(tmp_path: Path) -> None:
    data = _write(tmp_path / "wide.png", size=(300, 200)).read_bytes()
    assert decode_image(data, max_pixels=300 * 200).size == (300, 200)
    with pytest.raises(ImageReadError, match="300×200 pixels, more than the 59999 allowed"):
        decode_image(data, "upload", max_pixels=300 * 200 - 1)


def test_a_jpeg_may_decode_at_a_reduced_scale(tmp_path: Path) -> None:
    encoded = io.BytesIO()
    PIL.Image.effect_noise((1024, 768), 40).convert("RGB").save(encoded, "JPEG")
    assert decode_image(encoded.getvalue()).size == (1024, 768)
    reduced = decode_image(encoded.getvalue(), at_least=(200, 200))
    assert reduced.mode == "RGB" and reduced.size == (512, 384)  # 1/2: 1/4 would leave 192 < 200 rows


def test_collection_root_of_each_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    assert collection_root(FolderSource("photos").description) == tmp_path / "photos"  # recorded absolute
    listing, table = tmp_path / "list.txt", tmp_path / "rows.csv"
    listing.write_text("photos/a.jpg\n")
    table.write_text("path,label\nphotos/a.jpg,x\n")
    for source, root in ((FolderSource(tmp_path / "photos"), tmp_path / "photos"), (ListFileSource(listing), tmp_path),
                         (TableSource(table), tmp_path)):
        assert collection_root(source.description) == root
    assert collection_root(MemorySource([]).description) is None
    assert collection_root("folder photos") is None  # relative: where it was is unknown


def test_preprocess_batch_uses_the_models_transform(tmp_path: Path) -> None:
    loaded = load_model("deit_tiny_patch16_224", pretrained=False)
    paths = [_write(tmp_path / "a.png", size=(300, 200)), _write(tmp_path / "b.png", "L", size=(64, 64))]
    batch = preprocess_batch(paths, loaded)
    assert batch.shape == (2, 3, 224, 224)
    # A flat grey image comes out as the model's own per-channel normalisation of 128.
    mean, std = (torch.tensor(loaded.model.pretrained_cfg[key]) for key in ("mean", "std"))
    expected = ((128 / 255 - mean) / std)[None, :, None, None].expand_as(batch)
    torch.testing.assert_close(batch, expected, atol=1e-3, rtol=0)
