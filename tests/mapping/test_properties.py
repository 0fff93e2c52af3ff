"""Property vocabularies, user-defined properties, text subspaces and example folders."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from compsearch.mapping.properties import (
    Property,
    PropertyError,
    builtin_property,
    builtin_property_names,
    description_embeddings,
    load_examples,
    orthonormal_basis,
    parse_property,
    resolve_properties,
)
from compsearch.mapping.properties.known_words import (
    closed_vocabulary,
    warn_if_photos,
    warn_unknown_words,
    write_vocabulary,
)

REFERENCE = {"colour", "texture", "pattern", "shape", "fabric", "location", "person", "animal", "vehicle"}


def test_builtin_vocabularies_cover_the_reference_properties() -> None:
    assert set(builtin_property_names()) == REFERENCE
    for name in REFERENCE:
        prop = builtin_property(name)
        assert len(prop.descriptions) >= 8 and len(set(prop.descriptions)) == len(prop.descriptions)
    assert {"spotted", "striped", "polka dot", "plain", "checkered"} <= set(builtin_property("pattern").descriptions)
    assert builtin_property("color") is builtin_property("colour")


def test_command_line_and_file_properties(tmp_path: Path) -> None:
    [gloss] = parse_property("gloss = shiny, dull ,")
    assert gloss.name == "gloss" and gloss.descriptions == ("shiny", "dull")
    assert gloss.prompts("shiny")[0] == "a photo of shiny."
    path = tmp_path / "mine.yaml"
    path.write_text("size: [tiny, huge]\nmood:\n  descriptions: [calm, busy]\n  templates: ['a {} scene']\n")
    size, mood = parse_property(str(path))
    assert size.descriptions == ("tiny", "huge") and mood.prompts("calm") == ["a calm scene"]
    (tmp_path / "mine.json").write_text('{"size": ["tiny", "huge"]}')
    assert parse_property(str(tmp_path / "mine.json"))[0] == size


@pytest.mark.parametrize("option, message", [
    ("colr", "no built-in property"),
    ("=a,b", "has no name"),
    ("gloss=", "no descriptions"),
])
def test_bad_property_options_are_explained(option: str, message: str) -> None:
    with pytest.raises(PropertyError, match=message):
        parse_property(option)


def test_bad_files_and_templates_are_explained(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("size: {colours: [red]}\n")
    with pytest.raises(PropertyError, match="neither a list"):
        parse_property(str(tmp_path / "bad.yaml"))
    with pytest.raises(PropertyError, match="exactly one"):
        Property("x", ("a",), ("no placeholder",))
    with pytest.raises(PropertyError, match="more than once"):
        resolve_properties(["colour", "color"])
    assert {p.name for p in resolve_properties([])} == REFERENCE


def test_description_embedding_averages_normalised_template_embeddings() -> None:
    table = {"a red.": [3.0, 0, 0], "b red.": [0, 1.0, 0], "a blue.": [0, 0, 2.0], "b blue.": [0, 0, 5.0]}
    prop = Property("colour", ("red", "blue"), ("a {}.", "b {}."))
    embedded = description_embeddings(prop, lambda texts: torch.tensor([table[t] for t in texts]))
    root_half = 2 ** -0.5
    assert torch.allclose(embedded, torch.tensor([[root_half, root_half, 0], [0, 0, 1.0]]))


def test_orthonormal_basis_spans_the_descriptions_and_drops_dependent_ones() -> None:
    embeddings = F.normalize(torch.randn(3, 16), dim=-1)
    with_dependent = torch.cat([embeddings, F.normalize(embeddings[:1] + embeddings[1:2], dim=-1)])
    basis = orthonormal_basis(with_dependent)
    assert basis.shape == (3, 16)
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(with_dependent @ basis.T @ basis, with_dependent, atol=1e-5)  # same span


def test_example_folders_define_a_property(tmp_path: Path) -> None:
    for value, count in (("striped", 2), ("plain", 3)):
        (tmp_path / "stripes" / value).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "stripes" / value / f"{i}.jpg").write_bytes(b"")
    examples = load_examples(tmp_path / "stripes")
    assert examples.name == "stripes" and examples.values == ("plain", "striped")
    assert examples.labels == (0, 0, 0, 1, 1) and examples.images[-1].parent.name == "striped"
    with pytest.raises(PropertyError, match="at least two"):
        load_examples(tmp_path / "stripes" / "plain")


def test_a_labelled_table_defines_a_property(tmp_path: Path) -> None:
    """The world's own labels: `compsearch world render` writes OUT/train.parquet beside the images."""
    from compsearch.indexer.world import SPLITS, write_split

    table = write_split(tmp_path, SPLITS["train"], 12, 16)
    examples = load_examples(f"{table}:colour")
    rows = pq.read_table(table).to_pylist()
    assert examples.name == "colour" and examples.values == tuple(sorted({row["colour"] for row in rows}))
    assert [examples.values[label] for label in examples.labels] == [row["colour"] for row in rows]
    assert [image.relative_to(tmp_path).as_posix() for image in examples.images] == [row["file"] for row in rows]
    assert all(image.is_file() for image in examples.images)
    assert load_examples(f"{table}:shape", name="form").name == "form"
    with pytest.raises(PropertyError, match="no column 'hue'.*colour"):
        load_examples(f"{table}:hue")
    with pytest.raises(PropertyError, match="which column"):
        load_examples(table)


def test_a_closed_vocabulary_clip_names_the_words_it_never_learnt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_vocabulary(tmp_path, "renders of a test world", ["a red circle", "a photo of a blue square."])
    name = f"local-dir:{tmp_path}"
    vocabulary = closed_vocabulary(name)
    assert vocabulary.trained_on == "renders of a test world" and "photo" in vocabulary.words
    assert warn_unknown_words(name, ["red", "navy blue", "turquoise", "Blue!"], "property 'colour'") == [
        "navy", "turquoise"]
    assert ("property 'colour' uses words the CLIP never learnt ('navy', 'turquoise'): it was trained only on "
            "renders of a test world") in caplog.text
    caplog.clear()  # known words, and any CLIP without the file, say nothing
    assert warn_unknown_words(name, ["a red square"], "the text query") == []
    assert warn_unknown_words("ViT-B-32", ["turquoise"], "the text query") == []
    assert not warn_if_photos(name, ["world/000001.png"], "text properties are scored")
    assert not warn_if_photos("ViT-B-32", ["cat.jpg"], "text properties are scored")
    assert caplog.text == ""
    assert warn_if_photos(name, ["world/000001.png", "holiday/IMG_1.JPG"], "text properties are scored")
    assert "knows only its 7 words, but these images are photos" in caplog.text and "rank --examples" in caplog.text
