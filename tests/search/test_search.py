"""The search layer on a small world index whose model is the fixture CLIP itself (identity
alignment): text, reference-image, id and combined queries, the refusals, and the CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import PIL.Image
import pytest
import torch

from compsearch import search
from compsearch.indexer.artifacts import IndexMismatchError, encoder_for_build
from compsearch.indexer.build import IndexSettings, Indexer
from compsearch.indexer.faiss_choice import normalised
from compsearch.indexer.store import IndexStore
from compsearch.indexer.world import get_split, write_split
from compsearch.mapping.align import load_aligner, save_aligner
from compsearch.mapping.align.run import identity_aligner
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.onnx.image import OnnxImageTower
from compsearch.mapping.onnx.text import OnnxTextTower
from compsearch.mapping.onnx.towers import FORMAT_KEY, IMAGE_TOWER, TEXT_TOWER
from compsearch.mapping.properties.vocabulary import default_templates
from compsearch.mapping.rank import PropertyRanking, Ranking
from compsearch.search import Term
from compsearch.search.errors import NoTextEncoderError, QueryError, UnknownImageError, UnknownPropertyError
from compsearch.search.index import SearchIndex
from tests.test_cli import run_cli

IMAGES = 80
SETTINGS = IndexSettings(batch_size=32, workers=0, chunk_size=32, progress=False)
COLOURS = ("red", "blue", "green", "yellow")


@pytest.fixture(scope="module")
def built(clip: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/world`` (renders + train.parquet labels), ``root/identity`` aligner,
    ``root/ranking.json`` (two properties, components planted) and ``root/index``."""
    root = tmp_path_factory.mktemp("search")
    write_split(root / "world", get_split("train"), IMAGES, size=64, progress=False)
    aligner = identity_aligner(clip, root / "world" / "train")
    aligner_path = save_aligner(aligner, root / "identity")
    names = aligner.component_names

    def planted(name: str, top: list[str]) -> PropertyRanking:
        ordered = top + [n for n in names if n not in top]
        return PropertyRanking(name=name, source="text", values=["a", "b"], components=ordered,
                               scores=[1.0] * len(names), own_scores=[1.0] * len(names), k=len(top))

    ranking = Ranking(model_name=clip.name, model_weights_id=clip.weights_id, aligner=str(aligner_path),
                      clip_name=clip.name, first_block=aligner.meta.first_block, probe_images=0,
                      properties=[planted("colour", names[-4:-1]), planted("pattern", names[1:4])])
    ranking_path = ranking.save(root / "ranking.json")
    artifacts = encoder_for_build(clip, root / "index", aligner_path, ranking_path)
    Indexer(root / "index", artifacts.encoder, SETTINGS, artifacts.provenance).run(root / "world" / "train.parquet")
    return root


@pytest.fixture(scope="module")
def index(built: Path) -> SearchIndex:
    return search.open_index(built / "index")


def _stored(built: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(ids, normalised vectors, rows) read straight from the Parquet shards."""
    table = IndexStore(built / "index").dataset().to_table()
    column = table.column(f"vector.{name}").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), -1)
    return table.column("id").to_numpy(), normalised(vectors), table.drop_columns(
        [c for c in table.column_names if c.startswith("vector.")]).to_pylist()


def _path(built: Path, image_id: int) -> Path:
    return built / "world" / "train" / f"{image_id:06d}.png"


def test_the_index_describes_itself(index: SearchIndex, built: Path) -> None:
    assert index.properties == ["full", "colour", "pattern"]
    assert index.has_text and index.count == IMAGES
    assert index.info()["images"] == IMAGES
    record = index.record(7)
    assert record["key"] == "train/000007.png" and record["colour"] and record["width"] == 64
    with pytest.raises(UnknownImageError, match="no image with id 999"):
        index.record(999)


@pytest.mark.parametrize("colour", COLOURS)
def test_a_colour_word_finds_that_colour(index: SearchIndex, colour: str) -> None:
    results = index.search(text=colour, k=5).results
    assert len(results) == 5
    assert [result.metadata["colour"] for result in results] == [colour] * 5
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_a_text_query_names_the_words_the_fixture_never_learnt(index: SearchIndex, caplog: pytest.LogCaptureFixture) -> None:
    index.search(text="turquoise", property="colour", k=3)
    assert "the text query uses words the CLIP never learnt ('turquoise')" in caplog.text
    caplog.clear()
    index.search(text="red", property="colour", k=3)
    assert "never learnt" not in caplog.text


def test_text_queries_use_the_property_templates_and_index(index: SearchIndex, clip: LoadedModel, built: Path) -> None:
    """Independent path: prompt embeddings averaged by hand, brute force over the stored vectors."""
    templates = IndexStore(built / "index").read_manifest().properties["colour"].templates
    for name, used in (("colour", templates), ("full", default_templates())):
        with torch.no_grad():
            prompts = torch.nn.functional.normalize(clip.encode_text([t.replace("{}", "red") for t in used]), dim=-1)
        query = torch.nn.functional.normalize(prompts.mean(0), dim=0).numpy()
        ids, vectors, _ = _stored(built, name)
        expected = ids[np.argsort(-(vectors @ query), kind="stable")[:8]]
        results = index.search(text="red", property=name, k=8).results
        assert [r.id for r in results] == list(expected)
        np.testing.assert_allclose([r.score for r in results], np.sort(vectors @ query)[::-1][:8], atol=1e-4)
    assert templates != list(default_templates())


def test_a_reference_image_by_path_bytes_pil_and_id_agree(index: SearchIndex, built: Path) -> None:
    path = _path(built, 11)
    by_id = index.search(id=11, property="colour", k=10).results
    assert by_id[0].id == 11 and by_id[0].score == pytest.approx(1.0, abs=1e-5)
    for image in (path, str(path), path.read_bytes(), PIL.Image.open(path)):
        by_image = index.search(image=image, property="colour", k=10).results
        assert [r.id for r in by_image] == [r.id for r in by_id]
        np.testing.assert_allclose([r.score for r in by_image], [r.score for r in by_id], atol=3e-3)  # fp16 storage


def test_combined_terms_rank_like_brute_force_over_the_collection(index: SearchIndex, built: Path) -> None:
    index.oversampling = 1  # fewest candidates: the bound must do the work
    try:
        stored = {name: _stored(built, name) for name in index.properties}
        ids = stored["full"][0]
        assert all((stored[name][0] == ids).all() for name in stored)
        red = index.encoder.encode_text(["red"], index._templates("colour"))[0].numpy()
        plain = index.encoder.encode_text(["plain"], index._templates("pattern"))[0].numpy()
        queries = {
            "colour:text:red": red, "pattern:text:plain": plain,
            "pattern:id:3": stored["pattern"][1][list(ids).index(3)], "full:id:40": stored["full"][1][list(ids).index(40)],
        }
        combinations = [
            [Term("colour", text="red"), Term("pattern", id=3, weight=0.7)],
            [Term("colour", text="red"), Term("pattern", text="plain", weight=-0.5), Term("full", id=40, weight=0.3)],
            [Term("full", id=40, weight=2.0), Term("colour", text="red", weight=-1.0)],
        ]
        for terms in combinations:
            totals = sum(t.weight * (stored[t.property_name][1] @ queries[t.label]) for t in terms)
            expected = ids[np.lexsort((ids, -totals))][:4]
            found = index.search(terms=terms, k=4)
            assert [r.id for r in found.results] == list(expected)
            np.testing.assert_allclose([r.score for r in found.results], np.sort(totals)[::-1][:4], atol=1e-4)
            first = found.results[0]
            assert first.score == pytest.approx(sum(t.weight * first.scores[t.label] for t in terms), abs=1e-5)
            assert found.query["certified"] and found.query["candidates"] <= IMAGES
    finally:
        index.oversampling = SearchIndex.oversampling


def test_threshold_batch_and_negative_single_term(index: SearchIndex, built: Path) -> None:
    everything = index.search(text="blue", k=30).results
    cut = everything[9].score
    kept = index.search(text="blue", k=30, threshold=cut).results
    assert [r.id for r in kept] == [r.id for r in everything[:len(kept)]] and len(kept) >= 10
    assert all(r.score >= cut for r in kept)
    queries = [search.Query(text=c) for c in COLOURS] + [search.Query(image=_path(built, 5), property="pattern"),
                                                          search.Query(id=5, property="pattern")]
    batch = index.search_batch(queries, k=6)
    singles = [index.search(text=c, k=6) for c in COLOURS] + [index.search(image=_path(built, 5), property="pattern", k=6)]
    for together, alone in zip(batch, singles):
        assert [r.id for r in together.results] == [r.id for r in alone.results]
    assert [r.id for r in batch[-1].results] == [r.id for r in batch[-2].results]
    away = index.search(terms=[Term(text="blue", weight=-1.0)], k=5).results  # "NOT blue" alone: the least blue
    ranked = index.search(text="blue", k=IMAGES).results
    assert [r.id for r in away] == [r.id for r in ranked[::-1][:5]]
    assert [r.score for r in away] == pytest.approx([-r.score for r in ranked[::-1][:5]], abs=1e-6)
    assert all(r.metadata["colour"] != "blue" for r in away)


def test_malformed_queries_are_refused_clearly(index: SearchIndex, tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")
    cases = [
        (dict(text="red", property="texture"), UnknownPropertyError, "this index has full, colour, pattern"),
        (dict(text="  "), QueryError, "empty"),
        (dict(), QueryError, "empty"),
        (dict(text="red", id=3), QueryError, "exactly one"),
        (dict(text="red", k=0), QueryError, "1 to 10000"),
        (dict(text="red", k=10_001), QueryError, "1 to 10000"),
        (dict(text="red", offset=-1), QueryError, "offset"),
        (dict(text="red", k=10, offset=99_991), QueryError, "offset \\+ k at most 100,000"),
        (dict(text="red", where="camera == 'x'"), QueryError, "no column 'camera'"),
        (dict(id=999), UnknownImageError, "999"),
        (dict(image=tmp_path / "notes.jpg"), search.errors.ImageReadError, "not an image"),
        (dict(image=tmp_path / "missing.png"), search.errors.ImageReadError, "does not exist"),
    ]
    for arguments, error, message in cases:
        with pytest.raises(error, match=message):
            index.search(**arguments)
    with pytest.raises(QueryError, match="non-zero"):
        index.search(terms=[Term("colour", text="red", weight=0)])


def _copy(built: Path, tmp_path: Path) -> Path:
    """The index and its aligner copied together (the manifest finds the aligner relative to it)."""
    shutil.copytree(built / "index", tmp_path / "index")
    for path in built.glob("identity.*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / "index"


def test_other_weights_and_a_changed_aligner_are_refused(built: Path, clip: LoadedModel, tmp_path: Path) -> None:
    other = dataclasses.replace(clip, weights_id="0123456789abcdef")
    with pytest.raises(IndexMismatchError, match="weights .* the weights loaded are 0123456789abcdef"):
        search.open_index(built / "index", model=other).search(image=_path(built, 1))
    with pytest.raises(IndexMismatchError, match="embeds text with .*--clip-weights"):
        search.open_index(built / "index", model=clip, clip=other).search(text="red")
    copied = _copy(built, tmp_path)
    (copied / IMAGE_TOWER).unlink(missing_ok=True)
    assert search.open_index(copied).search(image=_path(built, 1), k=1).results[0].id == 1  # the copy works
    aligner = load_aligner(tmp_path / "identity")
    aligner.bias = aligner.bias + 0.01
    save_aligner(aligner, tmp_path / "identity")
    # The image tower, written (and checked against the aligner as it was) by the query above,
    # still makes the index's own vectors; without it, torch rebuilds the encoder from the files.
    assert search.open_index(copied).search(image=_path(built, 1), k=1).results[0].id == 1
    (copied / IMAGE_TOWER).unlink()
    with pytest.raises(IndexMismatchError, match="has changed since"):
        search.open_index(copied).search(image=_path(built, 1))
    # the stored vectors were mapped by the aligner as it was; a text (CLIP only) and an id (no model) still fit them
    assert search.open_index(copied).search(text="red", k=3).results
    assert search.open_index(copied).search(id=1, k=1).results[0].id == 1


def test_cli_table_json_and_one_line_errors(built: Path, index: SearchIndex, monkeypatch, capsys) -> None:
    folder = str(built / "index")
    code, out, err = run_cli(monkeypatch, capsys, "search", folder, "--text", "green", "-k", "4")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("4 results for full:text:green") and lines[1].split() == ["rank", "id", "score", "path"]
    expected = index.search(text="green", k=4).results
    for line, result in zip(lines[2:], expected):
        rank, image_id, score, path = line.split()
        assert (int(rank), int(image_id), path) == (result.rank, result.id, result.path)
        assert float(score) == pytest.approx(result.score, abs=1e-4)
    code, out, err = run_cli(monkeypatch, capsys, "search", folder, "--text", "red", "-p", "colour",
                             "--not", "pattern:text:plain", "--and", "0.5*full:id:3", "-k", "3", "--json")
    assert code == 0, err
    answer = json.loads(out)
    terms = [Term("colour", text="red"), Term("pattern", text="plain", weight=-1.0), Term("full", id=3, weight=0.5)]
    python = index.search(terms=terms, k=3).to_json()
    assert [r["id"] for r in answer["results"]] == [r["id"] for r in python["results"]]
    assert [t["weight"] for t in answer["query"]["terms"]] == [1.0, 0.5, -1.0]  # --and terms, then --not
    assert set(answer["results"][0]) >= {"rank", "id", "key", "path", "score", "scores", "metadata"}
    assert set(answer["seconds"]) == {"encode", "search", "total"}
    for arguments, message in (
        (["--text", "red", "-p", "texture"], "no property 'texture'.*full, colour, pattern"),
        (["--image", str(built / "ranking.json")], "not an image"),
        (["--id", "4242"], "no image with id 4242"),
        (["--text", "red", "--and", "colour:colour:red"], "cannot read the query term"),
    ):
        code, out, err = run_cli(monkeypatch, capsys, "search", folder, *arguments)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (arguments, err)
        assert __import__("re").search(message, err), err


def test_a_model_space_index_has_no_text_encoder(built: Path, clip: LoadedModel, tmp_path: Path,
                                                 monkeypatch, capsys) -> None:
    artifacts = encoder_for_build(clip, tmp_path / "plain")
    Indexer(tmp_path / "plain", artifacts.encoder, SETTINGS, artifacts.provenance).run(built / "world" / "train")
    index = search.open_index(tmp_path / "plain")
    assert not index.has_text and index.properties == ["full"]
    with pytest.raises(NoTextEncoderError, match="no text encoder"):
        index.search(text="red")
    assert index.search(image=_path(built, 2), k=1).results[0].key == "000002.png"
    code, _, err = run_cli(monkeypatch, capsys, "search", str(tmp_path / "plain"), "--text", "red")
    assert code == 2 and "no text encoder" in err


def test_ivf_and_pq_indexes_open_with_their_nprobe_and_rescore_exactly(built: Path, clip: LoadedModel,
                                                                        index: SearchIndex, tmp_path: Path) -> None:
    import faiss

    for factory in ("IVF4,Flat", "IVF4,PQ8x4"):
        folder = tmp_path / factory
        artifacts = encoder_for_build(clip, folder, built / "identity", built / "ranking.json")
        settings = dataclasses.replace(SETTINGS, index=factory)
        Indexer(folder, artifacts.encoder, settings, artifacts.provenance).run(built / "world" / "train.parquet")
        other = search.open_index(folder)
        assert (folder / "colour.ivfdata").is_file()  # lists merged on disk, memory-mapped
        nprobe = other.manifest.indexes["colour"].search_parameters["nprobe"]  # chosen for recall@10 ≥ 0.95
        assert 1 <= nprobe <= 4 and faiss.extract_index_ivf(other._index("colour")).nprobe == nprobe
        ids, vectors, _ = _stored(built, "pattern")
        # PQ codes are approximate: there the exact vectors come from the file kept beside them
        assert (other.manifest.indexes["pattern"].exact_files == []) == factory.endswith("Flat")
        np.testing.assert_allclose(other.stored_vectors("pattern", ids[:5]), vectors[:5], atol=1e-6)
        terms = [Term("colour", text="red"), Term("pattern", id=int(ids[2]), weight=-0.5)]
        found = other.search(terms=terms, k=5).results
        position = {int(image_id): row for row, image_id in enumerate(ids)}
        red = other.encoder.encode_text(["red"], other._templates("colour"))[0].numpy()
        colour = _stored(built, "colour")[1]
        for result in found:  # scores are exact, whatever the index approximated
            row = position[result.id]
            expected = colour[row] @ red - 0.5 * vectors[row] @ vectors[2]
            assert result.score == pytest.approx(float(expected), abs=1e-4)
        if factory.endswith("Flat"):
            assert [r.id for r in found] == [r.id for r in index.search(terms=terms, k=5).results]


def _brute_force(built: Path, terms: list[Term], where_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, totals) of the images in ``where_ids``, best first, ties by id, from the shards."""
    stored = {name: _stored(built, name) for name in {t.property_name for t in terms}}
    ids = next(iter(stored.values()))[0]
    position = {int(i): p for p, i in enumerate(ids)}
    totals = sum(t.weight * (stored[t.property_name][1] @ stored[t.property_name][1][position[t.id]]) for t in terms)
    keep = np.isin(ids, where_ids)
    order = np.lexsort((ids[keep], -totals[keep]))
    return ids[keep][order], totals[keep][order]


FILTERS = {  # where → the ids it keeps, computed from the world's labels by hand
    "id == 17": lambda rows: [r["id"] for r in rows if r["id"] == 17],
    "colour == 'red'": lambda rows: [r["id"] for r in rows if r["colour"] == "red"],
    "colour in ('red', 'blue') and not pattern == 'plain'":
        lambda rows: [r["id"] for r in rows if r["colour"] in ("red", "blue") and r["pattern"] != "plain"],
    "id < 40 or shape == 'star'": lambda rows: [r["id"] for r in rows if r["id"] < 40 or r["shape"] == "star"],
    "id >= 0": lambda rows: [r["id"] for r in rows],
    "id > 1000": lambda rows: [],
}


@pytest.mark.parametrize("scan", [True, False], ids=["exact-scan", "faiss-selector"])
@pytest.mark.parametrize("where", list(FILTERS))
def test_filtered_queries_are_the_top_k_of_the_filtered_set(index: SearchIndex, built: Path, where: str, scan: bool,
                                                            monkeypatch) -> None:
    monkeypatch.setattr("compsearch.search.filtered.EXACT_SCAN_MAX", IMAGES if scan else 0)
    rows = _stored(built, "full")[2]
    kept = np.array(FILTERS[where](rows), np.int64)
    for terms in ([Term("colour", id=11)], [Term("colour", id=11), Term("pattern", id=3, weight=-0.5)]):
        for k in (1, 5, IMAGES):
            expected_ids, expected_totals = _brute_force(built, terms, kept)
            found = index.search(terms=terms, k=k, where=where)
            assert len(found.results) == min(k, len(kept))  # never fewer than k when k match
            assert [r.id for r in found.results] == list(expected_ids[:k])
            np.testing.assert_allclose([r.score for r in found.results], expected_totals[:k], atol=1e-4)
            assert found.query["where"] == where


def test_pages_join_into_the_whole_ranking(index: SearchIndex) -> None:
    whole = [r.id for r in index.search(text="red", property="colour", k=IMAGES).results]
    pages = [index.search(text="red", property="colour", k=7, offset=offset).results for offset in range(0, IMAGES, 7)]
    assert [r.id for page in pages for r in page] == whole
    assert [r.rank for page in pages for r in page] == list(range(1, IMAGES + 1))
    combined = [Term("colour", text="red"), Term("pattern", id=3, weight=0.5)]
    whole = [r.id for r in index.search(terms=combined, k=30).results]
    assert [r.id for r in index.search(terms=combined, k=10, offset=20).results] == whole[20:30]


def test_cli_formats_and_copy_to(built: Path, index: SearchIndex, monkeypatch, capsys, tmp_path: Path) -> None:
    folder = str(built / "index")
    expected = index.search(text="blue", property="colour", k=5, where="pattern != 'plain'").results
    query = ["search", folder, "--text", "blue", "-p", "colour", "-k", "5", "--where", "pattern != 'plain'"]
    code, out, err = run_cli(monkeypatch, capsys, *query, "--format", "paths")
    assert code == 0, err
    assert out.splitlines() == [r.path for r in expected]
    code, out, err = run_cli(monkeypatch, capsys, *query, "--format", "jsonl")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [r.id for r in expected]
    code, out, err = run_cli(monkeypatch, capsys, *query, "--format", "csv")
    table = list(__import__("csv").DictReader(out.splitlines()))
    assert [int(row["id"]) for row in table] == [r.id for r in expected]
    assert [row["pattern"] for row in table] == [r.metadata["pattern"] for r in expected]
    assert all(row["pattern"] != "plain" for row in table)
    code, out, err = run_cli(monkeypatch, capsys, *query, "--offset", "2", "--copy-to", str(tmp_path / "picked"))
    assert code == 0, err
    page = index.search(text="blue", property="colour", k=5, offset=2, where="pattern != 'plain'").results
    assert [r.id for r in page[:3]] == [r.id for r in expected[2:]]
    copied = sorted((tmp_path / "picked").iterdir())
    assert [p.name for p in copied] == [f"{r.rank}-{Path(r.path).name}" for r in page]
    assert all(p.read_bytes() == Path(r.path).read_bytes() for p, r in zip(copied, page))
    code, out, err = run_cli(monkeypatch, capsys, *query, "--where", "camera == 'x'")
    assert code == 2 and "no column 'camera'" in err and len(err.strip().splitlines()) == 1


def test_an_id_query_imports_no_model_library(built: Path) -> None:
    """What keeps `compsearch search DIR --id N` fast from a cold shell: no torch, timm or open_clip,
    and no pandas (which pyarrow.dataset and NumPy↔Arrow conversions import: ~0.2 s)."""
    code = ("import sys; from compsearch.search.launch import main; sys.argv = ['compsearch', 'search', sys.argv[1], "
            "'--id', '3', '-k', '2', '--format', 'paths']\n"
            "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
            "heavy = [m for m in ('torch', 'timm', 'open_clip', 'torchvision', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy")
    answer = __import__("subprocess").run([__import__("sys").executable, "-c", code, str(built / "index")],
                                          capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines()[0] == str(_path(built, 3))



def test_queries_through_the_onnx_towers_equal_those_through_torch(built: Path, clip: LoadedModel) -> None:
    """The first text and image queries answer with torch and write the towers beside the
    index; the next index opened answers through them, with the same results."""
    folder = shutil.copytree(built / "index", built / "onnx-index")
    for tower in (TEXT_TOWER, IMAGE_TOWER):
        (folder / tower).unlink(missing_ok=True)
    image = _path(built, 11)
    queries = [dict(text="red", property="colour"), dict(text="a dotted thing", property="pattern"),
               dict(terms=[Term("colour", text="blue"), Term("pattern", text="striped", weight=-0.5)]),
               dict(image=image, property="colour"), dict(image=PIL.Image.open(image).convert("L")),
               dict(terms=[Term("pattern", image=image), Term("colour", text="green", weight=0.5)])]
    first = search.open_index(folder)
    through_torch = [first.search(k=8, **query).results for query in queries]
    assert (folder / TEXT_TOWER).is_file() and (folder / IMAGE_TOWER).is_file()
    towers = search.open_index(folder)
    assert isinstance(towers.text_encoder.__self__, OnnxTextTower)
    assert isinstance(towers.image_encoder.__self__, OnnxImageTower)
    for query, expected in zip(queries, through_torch):
        results = towers.search(k=8, **query).results
        assert [r.id for r in results] == [r.id for r in expected]
        np.testing.assert_allclose([r.score for r in results], [r.score for r in expected], atol=1e-5)
    assert towers._text_model is None and towers._encoder is None  # no torch model was loaded
    given = search.open_index(folder, clip=clip, model=clip)  # models handed over are used as they are
    assert given.text_encoder == given.text_model.encode_text and given.image_encoder == given.encoder.encode_images


@pytest.mark.parametrize("kind", ["text", "image"])
def test_a_query_from_the_shell_imports_no_torch(built: Path, kind: str) -> None:
    """With the towers beside the index, `compsearch search DIR --text/--image …` needs no torch."""
    value = "red" if kind == "text" else str(_path(built, 5))
    expected = search.open_index(built / "index").search(property="colour", k=3, **{kind: value}).results
    assert (built / "index" / (TEXT_TOWER if kind == "text" else IMAGE_TOWER)).is_file()  # written by that query
    code = ("import sys; from compsearch.search.launch import main; sys.argv = ['compsearch', 'search', *sys.argv[1:], "
            "'-p', 'colour', '-k', '3', '--format', 'jsonl']\n"
            "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
            "heavy = [m for m in ('torch', 'timm', 'open_clip', 'torchvision', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy")
    answer = __import__("subprocess").run([__import__("sys").executable, "-c", code, str(built / "index"), f"--{kind}",
                                           value], capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr
    assert [json.loads(line)["id"] for line in answer.stdout.splitlines()] == [r.id for r in expected]


@pytest.mark.parametrize("tower", [TEXT_TOWER, IMAGE_TOWER])
def test_a_tower_for_another_model_is_replaced(built: Path, tower: str, caplog: pytest.LogCaptureFixture) -> None:
    """A stale tower (here: one claiming another source) is not run: torch answers, with a
    warning, and writes the right tower in its place."""
    folder = shutil.copytree(built / "index", built / f"stale-{tower}")
    query = dict(text="green") if tower == TEXT_TOWER else dict(image=_path(built, 7), property="pattern")
    search.open_index(folder).search(k=1, **query)
    model = onnx.load(str(folder / tower))
    onnx.helper.set_model_props(model, {p.key: p.value if p.key == FORMAT_KEY else "another" for p in model.metadata_props})
    onnx.save(model, str(folder / tower))
    expected = search.open_index(built / "index").search(k=5, **query).results
    stale = search.open_index(folder)
    results = stale.search(k=5, **query).results
    assert f"{folder / tower} was exported for another" in caplog.text and "written anew" in caplog.text
    assert [r.id for r in results] == [r.id for r in expected]
    fresh = search.open_index(folder)
    encoder = fresh.text_encoder if tower == TEXT_TOWER else fresh.image_encoder
    assert isinstance(encoder.__self__, OnnxTextTower if tower == TEXT_TOWER else OnnxImageTower)
