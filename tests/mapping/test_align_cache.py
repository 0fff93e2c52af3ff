"""The feature cache: rows stay aligned with their images, and interrupted runs resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mapping.align.cache import build_cache, is_heldout, list_images
from mapping.errors import CompsearchError

KEY = {"model": "m", "model_weights_id": "1", "clip": "c", "clip_weights_id": "2", "first_block": "blocks.7"}


def _image_id(path: Path) -> float:
    return float(path.stem.split("_")[1])


class Encoder:
    """Fake models: every value derives from the image's own number, so a pairing error shows."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_after = fail_after

    def __call__(self, paths: list[Path]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt
        self.calls.append([path.name for path in paths])
        ids = torch.tensor([_image_id(path) for path in paths])
        contributions = ids.view(-1, 1, 1).expand(-1, 2, 3).clone()
        return ["init", "bias"], contributions, torch.stack([ids, -ids], 1)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(23):
        (folder / ("sub" if i % 2 else ".") / f"img_{i:03d}.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_list_images_is_sorted_relative_and_filters_suffixes(tmp_path: Path, images: Path) -> None:
    found = list_images(images)
    assert len(found) == 23 and found == sorted(found) and "sub/img_001.png" in found
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompsearchError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(CompsearchError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_every_row_pairs_contributions_with_its_own_target(tmp_path: Path, images: Path) -> None:
    cache = build_cache(tmp_path / "cache", images, list_images(images), Encoder(), KEY, shard_size=5,
                        heldout_fraction=0.3, progress=False)
    assert cache.component_names == ["init", "bias"] and cache.dims == (3, 2)
    seen = []
    for heldout in (False, True):
        for contributions, targets in cache.batches(4, heldout, torch.Generator().manual_seed(1)):
            assert torch.equal(contributions[:, 0, 0], targets[:, 0])
            assert torch.equal(targets[:, 1], -targets[:, 0])
            seen += targets[:, 0].tolist()
    assert sorted(seen) == [float(i) for i in range(23)]  # train and held-out partition the rows


def test_heldout_rows_follow_the_path_hash(tmp_path: Path, images: Path) -> None:
    cache = build_cache(tmp_path / "cache", images, list_images(images), Encoder(), KEY, shard_size=5,
                        heldout_fraction=0.3, progress=False)
    heldout = sorted(int(t[0]) for _, targets in cache.batches(64, heldout=True) for t in targets)
    expected = sorted(int(Path(image).stem.split("_")[1]) for image in cache.images if is_heldout(image, 0.3))
    assert heldout == expected and 0 < len(heldout) < 23


def test_an_interrupted_build_resumes_after_its_last_complete_shard(tmp_path: Path, images: Path) -> None:
    order = list_images(images)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "cache", images, order, Encoder(fail_after=2), KEY, shard_size=5, progress=False)
    assert len(json.loads((tmp_path / "cache" / "manifest.json").read_text())["shards"]) == 2
    resumed = Encoder()
    cache = build_cache(tmp_path / "cache", images, order, resumed, KEY, shard_size=5, progress=False)
    assert [name for call in resumed.calls for name in call] == [Path(p).name for p in order[10:]]
    assert len(cache.manifest["shards"]) == 5
    again = Encoder()
    build_cache(tmp_path / "cache", images, order, again, KEY, shard_size=5, progress=False)
    assert again.calls == []


def test_a_cache_for_other_models_is_refused(tmp_path: Path, images: Path) -> None:
    order = list_images(images)
    build_cache(tmp_path / "cache", images, order, Encoder(), KEY, shard_size=5, progress=False)
    with pytest.raises(CompsearchError, match="built for other models"):
        build_cache(tmp_path / "cache", images, order, Encoder(), {**KEY, "clip_weights_id": "3"}, shard_size=5,
                    progress=False)


def test_a_shard_holding_other_images_is_detected(tmp_path: Path, images: Path) -> None:
    order = list_images(images)
    cache = build_cache(tmp_path / "cache", images, order, Encoder(), KEY, shard_size=5, progress=False)
    first, second = (tmp_path / "cache" / name for name in cache.manifest["shards"][:2])
    first.write_bytes(second.read_bytes())  # e.g. a shard copied in from another run
    with pytest.raises(CompsearchError, match="does not hold the images"):
        cache.read_shard(0)
