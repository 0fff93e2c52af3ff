"""The component store beside an index and what is rebuilt from it without the image model's
forward pass: ``add-property`` and ``reindex`` give what a fresh ``compsearch index`` of the
same images with the same settings gives (vectors to storage precision, same top results)."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from compsearch.indexer.artifacts import encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.component_store import iter_components
from compsearch.indexer.faiss_choice import normalised
from compsearch.indexer.relearn import add_properties, reindex
from compsearch.indexer.store import IndexStore
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.align import save_aligner
from compsearch.mapping.align.run import identity_aligner
from compsearch.mapping.decompose import decompose
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.onnx.towers import IMAGE_TOWER
from compsearch.mapping.rank import PropertyRanking, Ranking
from compsearch.search.index import SearchIndex
from tests.test_cli import run_cli

IMAGES = 48
SETTINGS = IndexSettings(batch_size=16, workers=0, chunk_size=16, progress=False)
FP16_VECTORS = 2e-3  # normalised fp16 vectors, rebuilt from fp16 components: a few 2⁻¹¹


@pytest.fixture(scope="module")
def world(clip: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/world/train`` renders, the ``root/identity`` aligner and ``root/ranking.json`` (colour, pattern)."""
    root = tmp_path_factory.mktemp("relearn")
    write_split(root / "world", get_split("train"), IMAGES, size=64, progress=False)
    aligner = identity_aligner(clip, root / "world" / "train")
    save_aligner(aligner, root / "identity")
    names = aligner.component_names
    _ranking(clip, root, names, {"colour": names[-4:-1], "pattern": names[1:4]}, "ranking.json")
    return root


def _ranking(clip: LoadedModel, root: Path, names: list[str], tops: dict[str, list[str]], file: str) -> Path:
    def planted(name: str, top: list[str]) -> PropertyRanking:
        ordered = top + [n for n in names if n not in top]
        return PropertyRanking(name=name, source="text", values=["a", "b"], components=ordered,
                               scores=[1.0] * len(names), own_scores=[1.0] * len(names), k=len(top))

    return Ranking(model_name=clip.name, model_weights_id=clip.weights_id, aligner=str(root / "identity.safetensors"),
                   clip_name=clip.name, first_block=None, probe_images=0,
                   properties=[planted(name, top) for name, top in tops.items()]).save(root / file)


def _index(clip: LoadedModel, root: Path, out: str, ranking: Path, properties: list[str] | None,
           store: str | None = "fp16") -> Path:
    built = encoder_for_build(clip, root / out, root / "identity.safetensors", ranking, properties)
    settings = IndexSettings(**{**SETTINGS.__dict__, "store": store})
    Indexer(root / out, built.encoder, settings, built.provenance).run(root / "world" / "train")
    return root / out


def _vectors(folder: Path, name: str) -> np.ndarray:
    pieces = list(IndexStore(folder).iter_vectors(name))
    order = np.argsort(np.concatenate([ids for ids, _ in pieces]))
    return normalised(np.concatenate([vectors for _, vectors in pieces]))[order]


def _same_index(rebuilt: Path, fresh: Path, name: str) -> None:
    """Vectors to storage precision, the same top results, the same manifest entry."""
    ours, theirs = _vectors(rebuilt, name), _vectors(fresh, name)
    assert np.abs(ours - theirs).max() < FP16_VECTORS
    index_a, index_b = (faiss.read_index(str(folder / f"{name}.faiss")) for folder in (rebuilt, fresh))
    for query in theirs[:8]:
        top_a = index_a.search(query[None], 5)[1][0]
        top_b = index_b.search(query[None], 5)[1][0]
        assert top_a[0] == top_b[0] and len(set(top_a) & set(top_b)) >= 4
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (rebuilt, fresh)]
    assert manifests[0]["properties"][name] == manifests[1]["properties"][name]
    assert manifests[0]["encoder"] == manifests[1]["encoder"]


def test_the_store_is_written_beside_each_shard_and_expands_to_the_components(clip: LoadedModel, world: Path) -> None:
    folder = _index(clip, world, "stored", world / "ranking.json", None, store="fp32")
    store = IndexStore(folder)
    assert [p.name for p in (folder / "store").iterdir()] and \
        sorted(p.name for p in (folder / "store").iterdir()) == [p.name for p in store.shard_paths()]
    entry = store.read_manifest().store
    assert entry.dtype == "fp32" and entry.model_weights_id == clip.weights_id
    assert entry.layout["model"] == clip.name and entry.layout["dtype"] == "float32"
    _, ids, components, names = next(iter_components(store, entry.layout, clip))
    paths = [world / "world" / "train" / row["key"] for row in
             store.read_table(columns=["id", "key"]).to_pylist() if row["id"] in set(ids.tolist())]
    import PIL.Image
    import torch
    pixels = torch.stack([clip.preprocess(PIL.Image.open(p).convert("RGB")) for p in paths])
    fresh = decompose(clip.model, pixels, store.read_manifest().encoder.first_block, model_name=clip.name)
    assert names == fresh.names
    error = (components - fresh.contributions).norm(dim=-1) / fresh.contributions.norm(dim=-1).clamp_min(1e-6)
    assert error.max() < 1e-4


def test_add_property_equals_a_fresh_index(clip: LoadedModel, world: Path) -> None:
    fresh = _index(clip, world, "fresh", world / "ranking.json", None)
    partial = _index(clip, world, "partial", world / "ranking.json", ["colour"])
    assert not (partial / "pattern.faiss").exists()
    summary = add_properties(partial, ["pattern"], model=clip)
    assert list(summary.rebuilt) == ["pattern"] and summary.images == IMAGES
    _same_index(partial, fresh, "pattern")
    index = SearchIndex(partial, model=clip)  # text queries and exact rescoring on the new property
    results = index.search("a red thing", property="pattern", k=5)
    expected = SearchIndex(fresh, model=clip).search("a red thing", property="pattern", k=5)
    assert [r.id for r in results.results][:3] == [r.id for r in expected.results][:3]
    with pytest.raises(CompsearchError, match="already"):
        add_properties(partial, ["pattern"], model=clip)


def test_reindex_with_another_k_equals_a_fresh_index(clip: LoadedModel, world: Path) -> None:
    folder = _index(clip, world, "rek", world / "ranking.json", None)
    ranking = Ranking.load(world / "ranking.json")
    ranking.get("colour").k += 3
    fresh = _index(clip, world, "fresh-k", ranking.save(world / "ranking-k.json"), None)
    (folder / IMAGE_TOWER).write_bytes(b"an image tower of the old properties")
    summary = reindex(folder, k={"colour": ranking.get("colour").k}, model=clip)
    assert sorted(summary.rebuilt) == ["colour", "pattern"] and not (folder / IMAGE_TOWER).exists()
    _same_index(folder, fresh, "colour")
    _same_index(folder, fresh, "pattern")


def test_no_store_or_another_model_is_refused(clip: LoadedModel, world: Path, monkeypatch, capsys) -> None:
    bare = _index(clip, world, "bare", world / "ranking.json", ["colour"], store=None)
    assert not (bare / "store").exists() and json.loads((bare / "manifest.json").read_text())["store"] is None
    code, _, err = run_cli(monkeypatch, capsys, "add-property", str(bare), "--property", "pattern")
    assert code == 2 and "has no component store" in err and "Traceback" not in err
    assert "store      none" in run_cli(monkeypatch, capsys, "info", str(bare))[1]
    folder = _index(clip, world, "other", world / "ranking.json", ["colour"])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["store"]["model_weights_id"] = "0123456789ab"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CompsearchError, match="component store holds"):
        reindex(folder, k={"colour": 2}, model=clip)


def test_rank_on_the_stored_images_equals_ranking_the_images(clip: LoadedModel, world: Path, monkeypatch,
                                                             capsys) -> None:
    from compsearch.mapping.align import load_aligner
    from compsearch.mapping.properties import builtin_property
    from compsearch.mapping.rank import rank

    folder = _index(clip, world, "rank32", world / "ranking.json", ["colour"], store="fp32")
    properties = [builtin_property("colour"), builtin_property("shape")]
    aligner = load_aligner(world / "identity.safetensors")
    expected = rank(clip, aligner, world / "world" / "train", properties, encode_text=clip.encode_text, k=3)
    code, out, err = run_cli(monkeypatch, capsys, "rank", "--index", str(folder), "--property", "colour",
                             "--property", "shape", "--k", "3", "--out", str(world / "stored-ranking.json"), "--json")
    assert code == 0, err
    ranked = Ranking.load(world / "stored-ranking.json")
    assert ranked.probe_images == IMAGES  # every stored image, none read from disk
    for prop in expected.properties:
        ours = ranked.get(prop.name)
        assert ours.top == prop.top
        assert np.allclose(ours.scores, prop.scores, atol=1e-4)


def test_an_index_with_a_property_added_from_the_store_follows_its_folder(clip: LoadedModel, world: Path,
                                                                          tmp_path: Path) -> None:
    """Its vectors parts lose the removed rows with their shard, keep the moved ones, and the
    new shards get theirs: the property equals a fresh index of the folder as it is now."""
    import shutil

    import pyarrow.parquet as pq

    from compsearch.indexer.integrity import full_check

    images = tmp_path / "images"
    images.mkdir()
    renders = sorted((world / "world" / "train").glob("*.png"))
    for path in renders[:36]:
        shutil.copy(path, images / path.name)

    def build(out: Path, properties: list[str]):
        built = encoder_for_build(clip, out, world / "identity.safetensors", world / "ranking.json", properties)
        return Indexer(out, built.encoder, SETTINGS, built.provenance).run(images)

    folder = tmp_path / "index"
    build(folder, ["colour"])
    add_properties(folder, ["pattern"], model=clip)
    for path in renders[:2]:
        (images / path.name).unlink()
    (images / renders[2].name).rename(images / "moved.png")
    for path in renders[36:]:
        shutil.copy(path, images / path.name)
    summary = build(folder, ["colour", "pattern"])
    assert (summary.added, summary.removed, summary.moved, summary.images) == (IMAGES - 36, 2, 1, IMAGES - 2)
    store = IndexStore(folder)
    for shard in store.shard_paths():
        part = folder / "vectors" / "pattern" / shard.name
        assert pq.read_table(part, columns=["id"]) == pq.read_table(shard, columns=["id"])  # row for row
    assert full_check(folder).damage == []
    fresh = tmp_path / "fresh"
    build(fresh, ["colour", "pattern"])
    keys = {str(folder): {}, str(fresh): {}}
    for out in (folder, fresh):
        paths = dict(zip(*IndexStore(out).read_table(columns=["id", "key"]).to_pydict().values()))
        keys[str(out)] = {paths[i]: vector for ids, vectors in IndexStore(out).iter_vectors("pattern")
                          for i, vector in zip(ids.tolist(), normalised(vectors))}
    ours, theirs = keys[str(folder)], keys[str(fresh)]
    assert set(ours) == set(theirs) and "moved.png" in ours
    assert max(np.abs(ours[key] - theirs[key]).max() for key in ours) < FP16_VECTORS
    assert faiss.read_index(str(folder / "pattern.faiss")).ntotal == IMAGES - 2
