"""The feature cache: rows stay aligned with their images, unreadable images are skipped and
recorded, and interrupted runs resume without losing or repeating an image."""
from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest
import torch

from compsearch.mapping.align.cache import build_cache, is_heldout
from compsearch.mapping.chunk_store import DamagedFileError
from compsearch.mapping.errors import CompsearchError, Interrupted

KEY = {"model": "m", "model_weights_id": "1", "clip": "c", "clip_weights_id": "2", "first_block": "blocks.7"}
COUNT = 23


def _image_id(image: PIL.Image.Image) -> torch.Tensor:
    return torch.tensor(float(image.getpixel((0, 0))[0]))  # each image's grey level is its number


def _number(image: str) -> int:
    return int(Path(image).stem.split("_")[1])


class Encoder:
    """Fake models: every value derives from the image's own number, so a pairing error shows.
    The two transforms differ, as a model's and a CLIP's do."""

    transforms = [_image_id, lambda image: -_image_id(image)]

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.seen: list[float] = []
        self.interrupt_after = interrupt_after

    def __call__(self, pixels: list[torch.Tensor]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        if self.interrupt_after is not None and len(self.seen) >= self.interrupt_after:
            raise KeyboardInterrupt
        ids, negated = pixels
        self.seen += ids.tolist()
        contributions = ids.view(-1, 1, 1).expand(-1, 2, 3).clone()
        return ["init", "bias"], contributions, torch.stack([ids, negated], 1)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(COUNT):
        PIL.Image.new("RGB", (4, 4), (i, i, i)).save(folder / ("sub" if i % 2 else ".") / f"img_{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _build(tmp_path: Path, images: Path, encode: Encoder | None = None, **options):
    settings = {"shuffle_window": 5, "chunk_size": 3, "batch_size": 2, "progress": False, **options}
    return build_cache(tmp_path / "cache", images, encode or Encoder(), KEY, **settings)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_row_pairs_contributions_with_its_own_target(tmp_path: Path, images: Path, workers: int) -> None:
    cache = _build(tmp_path, images, heldout_fraction=0.3, workers=workers)
    assert cache.component_names == ["init", "bias"] and cache.dims == (3, 2)
    seen = []
    for heldout in (False, True):
        for contributions, targets in cache.batches(4, heldout, torch.Generator().manual_seed(1)):
            assert torch.equal(contributions[:, 0, 0], targets[:, 0])
            assert torch.equal(targets[:, 1], -targets[:, 0])
            seen += targets[:, 0].tolist()
    assert sorted(seen) == [float(i) for i in range(COUNT)]  # train and held-out partition the rows


def test_heldout_rows_follow_the_path_hash(tmp_path: Path, images: Path) -> None:
    cache = _build(tmp_path, images, heldout_fraction=0.3)
    heldout = sorted(int(t[0]) for _, targets in cache.batches(64, heldout=True) for t in targets)
    expected = sorted(_number(image) for image in cache.images if is_heldout(image, 0.3))
    assert heldout == expected and 0 < len(heldout) < COUNT
    assert cache.count(heldout=True) == len(heldout) and cache.count(heldout=False) == COUNT - len(heldout)


def test_unreadable_images_are_skipped_recorded_and_warned_about(
    tmp_path: Path, images: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    (images / "sub" / "img_001.png").write_bytes(b"")
    (images / "broken.jpg").write_text("not pixels")
    cache = _build(tmp_path, images)
    assert sorted(cache.skipped) == ["broken.jpg", "sub/img_001.png"]
    assert "is empty" in cache.skipped["sub/img_001.png"]
    assert len(cache.images) == COUNT - 1 and "sub/img_001.png" not in cache.images
    assert sum(len(targets) for _, targets in cache.batches(64, heldout=False)) + cache.count(True) == COUNT - 1
    assert "skipped 2 of 24 images" in caplog.text


def test_ctrl_c_keeps_the_complete_chunks_and_a_rerun_reads_only_the_rest(tmp_path: Path, images: Path) -> None:
    with pytest.raises(Interrupted, match=r"interrupted: 9 of 23 images are done and kept in") as interrupted:
        _build(tmp_path, images, Encoder(interrupt_after=10))  # in the middle of the fourth 3-image chunk
    assert "rerun the same command" in str(interrupted.value)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert sorted(path.name for path in (tmp_path / "cache").glob("part-*")) == [
        f"part-000-00000{chunk}.safetensors" for chunk in range(3)]
    kept = {_number(image) for image in manifest["images"][:9]}
    resumed = Encoder()
    cache = _build(tmp_path, images, resumed)
    assert sorted(resumed.seen) == sorted(float(i) for i in set(range(COUNT)) - kept)
    assert sorted(_number(image) for image in cache.images) == list(range(COUNT))
    again = Encoder()
    _build(tmp_path, images, again)
    assert again.seen == []


def test_a_cache_for_other_models_or_images_is_refused(tmp_path: Path, images: Path) -> None:
    _build(tmp_path, images)
    with pytest.raises(CompsearchError, match="built for other models"):
        build_cache(tmp_path / "cache", images, Encoder(), {**KEY, "clip_weights_id": "3"}, shuffle_window=5,
                    chunk_size=3, progress=False)
    PIL.Image.new("RGB", (4, 4)).save(images / "new.png")
    with pytest.raises(CompsearchError, match="built for other models, images"):
        _build(tmp_path, images)


def test_a_part_holding_other_images_is_detected(tmp_path: Path, images: Path) -> None:
    cache = _build(tmp_path, images)
    first, second = (cache.parts.path(0, chunk) for chunk in (0, 1))
    first.write_bytes(second.read_bytes())  # e.g. a part copied in from another run
    with pytest.raises(DamagedFileError, match="does not hold the images of its chunk"):
        cache.read_chunk(0)


def test_a_folder_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompsearchError, match="no images"):
        build_cache(tmp_path / "cache", tmp_path / "empty", Encoder(), KEY, progress=False)
