"""The one partition rule and the one resumable chunk store: units cover a listing exactly
once across partitions, a part on disk is a finished chunk, and a damaged file is one error
naming it."""
from __future__ import annotations

from pathlib import Path

import PIL.Image
import pytest

from compsearch.mapping.align.cache import FeatureCache, build_cache
from compsearch.mapping.chunk_store import ChunkStore, DamagedFileError, read_json, write_json
from compsearch.mapping.images import MemorySource
from compsearch.mapping.images.plan import WorkUnit, plan, plan_listing, units
from compsearch.mapping.images.probe import count_images
from tests.mapping.test_align_cache import KEY, Encoder


def _source(count: int) -> MemorySource:
    return MemorySource([(f"{i}", PIL.Image.new("RGB", (2, 2))) for i in range(count)])


def test_partitions_cover_every_position_once_and_agree_with_the_streamed_units() -> None:
    covered = []
    for index in range(3):
        cut = plan(_source(23), 4, (index, 3))
        assert (cut.listed, cut.chunks, cut.done) == (23, 6, ())
        streamed = [unit for unit, _ in units(_source(23).records(), 4, (index, 3))]
        assert list(cut.todo) == streamed and all(unit.chunk % 3 == index for unit in streamed)
        covered += [position for unit in cut.todo for position in range(unit.start, unit.stop)]
    assert sorted(covered) == list(range(23))
    assert plan_listing(23, 4).todo[-1] == WorkUnit(5, 20, 23) and len(WorkUnit(5, 20, 23)) == 3


def test_done_chunks_are_left_out_and_counted_apart() -> None:
    cut = plan(_source(23), 4, (1, 2), done={1, 2, 99})
    assert [unit.chunk for unit in cut.todo] == [3, 5] and cut.done_chunks == {1}
    assert (cut.images_todo, cut.images_done) == (7, 4)
    assert count_images(_source(23), 4, skip_chunks={0, 5}) == (23, 16)
    with pytest.raises(ValueError, match="partition"):
        plan(_source(3), 4, (2, 2))


def test_a_part_is_on_disk_only_once_completely_written(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "parts", ".bin")
    store.write(0, 3, lambda path: path.write_bytes(b"done"))

    def killed(path: Path) -> None:
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.write(0, 4, killed)
    store.write(1, 0, lambda path: path.write_bytes(b"another run"))
    assert store.done(0) == {3} and store.done(1) == {0}
    assert [path.name for path in store.parts()] == ["part-000-000003.bin", "part-001-000000.bin"]


def test_a_damaged_manifest_or_part_is_one_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_json(path, {"a": 1})
    assert read_json(path, "rebuild it") == {"a": 1}
    path.write_text('{"a": ')
    with pytest.raises(DamagedFileError) as error:
        read_json(path, "rebuild it")
    assert str(error.value).startswith(f"cannot read {path} (") and str(error.value).endswith(" — rebuild it")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damaged", ["manifest.json", "part-000-000001.safetensors"])
def test_a_damaged_feature_cache_file_is_refused_by_name(tmp_path: Path, damaged: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(7):
        PIL.Image.new("RGB", (4, 4), (i, i, i)).save(images / f"img_{i:03d}.png")
    build_cache(tmp_path / "cache", images, Encoder(), KEY, chunk_size=3, progress=False)
    (tmp_path / "cache" / damaged).write_bytes(b"\x00 truncated")
    with pytest.raises(DamagedFileError, match=rf"cannot read {tmp_path / 'cache' / damaged} .* — delete"):
        FeatureCache(tmp_path / "cache")
    with pytest.raises(DamagedFileError, match=damaged):
        build_cache(tmp_path / "cache", images, Encoder(), KEY, chunk_size=3, progress=False)
