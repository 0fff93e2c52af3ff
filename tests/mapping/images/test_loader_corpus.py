"""The loader over the awkward corpus: every good file once, every bad one skipped with its
reason, whether decoded in the main process or in workers — and never a hang."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torchvision.transforms.functional as TF

from compsearch.mapping.errors import ImageReadError
from compsearch.mapping.images import iter_batches, iter_unit_batches, open_source
from compsearch.mapping.images.plan import plan
from tests.corpus import write_awkward_corpus


def _tiny(image) -> object:
    return TF.to_tensor(image.resize((8, 8)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_every_good_file_once_every_bad_file_skipped_with_its_reason(tmp_path: Path, workers: int) -> None:
    good, bad = write_awkward_corpus(tmp_path)
    seen: Counter[str] = Counter()
    sizes, skipped = {}, {}
    for batch in iter_batches(tmp_path, [_tiny], batch_size=4, workers=workers, chunk_size=8):
        for record, size in zip(batch.records, batch.sizes):
            seen[record.key] += 1
            sizes[record.key] = size
        for record, reason in batch.skipped:
            skipped[record.key] = reason
        if batch.records:
            assert batch.pixels[0].shape == (len(batch), 3, 8, 8)
    assert dict(seen) == {name: 1 for name in good}
    assert sizes == good
    assert set(skipped) == set(bad)
    for name, reason in bad.items():
        assert reason in skipped[name], (name, skipped[name])


@pytest.mark.timeout(60)
def test_raise_policy_stops_at_a_bad_file(tmp_path: Path) -> None:
    write_awkward_corpus(tmp_path)
    with pytest.raises(ImageReadError, match="bomb.png is too large"):
        for _ in iter_batches(tmp_path, [_tiny], on_error="raise"):
            pass


def test_a_unit_read_alone_gives_the_batches_the_whole_pass_gives_it(tmp_path: Path) -> None:
    write_awkward_corpus(tmp_path)
    work = plan(open_source(tmp_path), chunk_size=8)
    whole = {}
    for batch in iter_batches(tmp_path, [_tiny], batch_size=3, chunk_size=8):
        whole.setdefault(batch.chunk, []).append(batch)
    assert len(work.todo) > 1
    for unit in work.todo:
        alone = list(iter_unit_batches(tmp_path, unit, [_tiny], batch_size=3))
        assert [b.chunk_done for b in alone] == [b.chunk_done for b in whole[unit.chunk]]
        for mine, theirs in zip(alone, whole[unit.chunk]):
            assert (mine.chunk, mine.records, mine.sha256, mine.skipped) == \
                (theirs.chunk, theirs.records, theirs.sha256, theirs.skipped)
            assert all(a.equal(b) for a, b in zip(mine.pixels, theirs.pixels))
