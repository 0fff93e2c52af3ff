"""An index whose image model is not its CLIP (a model aligned to the fixture CLIP): text
queries need only the CLIP, so they run where the image model's weights are not at hand."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from compsearch import search
from compsearch.indexer.artifacts import IndexMismatchError, encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.faiss_choice import normalised
from compsearch.indexer.store import IndexStore
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.align import TrainSettings, align
from compsearch.mapping.properties.prompts import embed_texts
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.rank import PropertyRanking, Ranking

IMAGES = 24
pytestmark = pytest.mark.filterwarnings("ignore:the held-out cosine is measured on only")


@pytest.fixture(scope="module")
def built(fixture_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel]:
    """``root/index`` of a randomly initialised DeiT-tiny aligned to the fixture CLIP (a model
    whose weights no later process can load again), and the CLIP."""
    root = tmp_path_factory.mktemp("text-only")
    write_split(root / "world", get_split("train"), IMAGES, size=64, progress=False)
    model, clip = load_model("deit_tiny_patch16_224", pretrained=False), load_model(f"local-dir:{fixture_clip}")
    settings = TrainSettings(learning_rate=1e-2, max_epochs=1, batch_size=8, heldout_fraction=0.25)
    aligner = align(model, clip, root / "world" / "train", root / "deit", settings=settings, progress=False)
    names = aligner.component_names
    top = names[-3:]
    ranking = Ranking(model.name, model.weights_id, str(root / "deit.safetensors"), clip.name,
                      aligner.meta.first_block, IMAGES, [PropertyRanking(
                          "colour", "text", ["red", "blue"], top + names[:-3], [1.0] * len(names),
                          [1.0] * len(names), len(top), templates=["a {} thing."])])
    artifacts = encoder_for_build(model, root / "index", root / "deit.safetensors", ranking.save(root / "ranking.json"))
    settings = IndexSettings(batch_size=8, workers=0, chunk_size=8, progress=False)
    Indexer(root / "index", artifacts.encoder, settings, artifacts.provenance).run(root / "world" / "train")
    return root / "index", clip


def test_a_text_query_loads_only_the_clip(built: tuple[Path, LoadedModel], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, clip = built
    loaded: list[str] = []

    def recording_load(name: str, **options) -> LoadedModel:
        loaded.append(name)
        return load_model(name, **options)

    monkeypatch.setattr("compsearch.mapping.models.load_model", recording_load)
    index = search.open_index(folder)
    results = index.search(text="red", property="colour", k=5).results
    assert loaded == [clip.name]  # not the DeiT, whose random weights could not be made again
    table = IndexStore(folder).dataset().to_table()
    vectors = normalised(np.stack(table.column("vector.colour").to_numpy(zero_copy_only=False)).astype(np.float32))
    query = embed_texts(clip.encode_text, ["red"], ["a {} thing."])[0]  # the ranking's own template
    scores = vectors @ query
    expected = table.column("id").to_numpy()[np.argsort(-scores, kind="stable")[:5]]
    assert [r.id for r in results] == list(expected)
    np.testing.assert_allclose([r.score for r in results], np.sort(scores)[::-1][:5], atol=1e-4)


def test_an_image_query_still_needs_the_image_model(built: tuple[Path, LoadedModel]) -> None:
    folder, _ = built
    with pytest.raises(IndexMismatchError, match="randomly initialised deit_tiny_patch16_224"):
        search.open_index(folder).search(image=folder.parent / "world" / "train" / "000003.png", property="colour", k=3)


def test_a_clip_other_than_the_aligners_is_refused_for_text(built: tuple[Path, LoadedModel]) -> None:
    folder, clip = built
    other = dataclasses.replace(clip, weights_id="0123456789abcdef")  # the same CLIP with other weights
    with pytest.raises(IndexMismatchError, match="--clip-weights"):
        search.open_index(folder, clip=other).search(text="red", k=3)
