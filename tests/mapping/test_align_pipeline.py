"""The align → rank → describe stages on real (tiny, randomly initialised) models and world images."""
from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from open_clip.push_to_hf_hub import save_config_for_hf

from compsearch.indexer.world.fixture_clip import (
    CONFIG_NAME,
    MODEL_CONFIG_PATH,
    MODEL_NAME,
    WEIGHTS_NAME,
    build_untrained,
    model_config,
)
from compsearch.indexer.world.render import render_image
from compsearch.indexer.world.splits import get_split
from compsearch.mapping.align import (
    Aligner,
    AlignerMeta,
    AlignerMismatchError,
    TrainSettings,
    align,
    check_aligner_fit,
    load_aligner,
)
from compsearch.mapping.align.features import component_contributions
from compsearch.mapping.describe import describe_heads, read_text_bank
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.errors import CompsearchError
from compsearch.mapping.properties import Property, PropertyError, builtin_property, load_examples
from compsearch.mapping.properties.known_words import write_vocabulary
from compsearch.mapping.rank import Ranking, rank
from compsearch.search.cli import cli

FAST = TrainSettings(learning_rate=1e-2, max_epochs=2, batch_size=8, heldout_fraction=0.25)


@pytest.fixture(scope="module")
def world_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("world")
    for item in get_split("train").items(24):
        render_image(item, size=48).save(folder / f"{item.index:03d}_{item.colour}.png")
    return folder


def _tiny_clip() -> LoadedModel:
    """The fixture CLIP's architecture, untrained (the trained one is the slow test's)."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_PATH)
    return load_model(MODEL_NAME, pretrained=False)


def test_a_clip_in_its_own_space_gets_an_exact_identity_aligner(tmp_path: Path, world_images: Path) -> None:
    clip = _tiny_clip()
    aligner = align(clip, clip, world_images, tmp_path / "identity", progress=False)
    assert aligner.meta.identity and aligner.weight is None
    assert aligner.meta.heldout_cosine == pytest.approx(1.0, abs=1e-5)
    assert not (tmp_path / "identity.cache").exists()  # nothing to train, nothing cached
    assert load_aligner(tmp_path / "identity").meta == aligner.meta


def test_align_trains_caches_and_persists_a_model_to_clip_aligner(tmp_path: Path, world_images: Path) -> None:
    model, clip = _tiny_clip(), _tiny_clip()  # two random inits: different models
    aligner = align(model, clip, world_images, tmp_path / "a", first_block="all", settings=FAST, progress=False)
    names, contributions = component_contributions(model, sorted(world_images.glob("*.png"))[:2], "all")
    assert aligner.component_names == names and aligner.meta.first_block == "visual.transformer.resblocks.0"
    assert aligner.weight.shape == (len(names), contributions.shape[-1], model_config()["embed_dim"])
    assert aligner.meta.train_images + aligner.meta.heldout_images == 24 and aligner.meta.heldout_images > 0
    assert -1.0 <= aligner.meta.heldout_cosine <= 1.0 and aligner.meta.settings["max_epochs"] == 2
    assert len(list((tmp_path / "a.cache").glob("part-*.safetensors"))) == 1  # 24 images: one chunk
    reloaded = load_aligner(tmp_path / "a.safetensors")
    assert torch.equal(reloaded.weight, aligner.weight)
    reloaded.meta.first_block = "visual.transformer.resblocks.2"  # fewer blocks than it was trained on
    with pytest.raises(AlignerMismatchError, match="components differ"):
        rank(model, reloaded, world_images, [builtin_property("colour")], encode_text=clip.encode_text)


def test_rank_and_describe_run_on_an_identity_aligner(tmp_path: Path, world_images: Path) -> None:
    clip = _tiny_clip()
    aligner = align(clip, clip, world_images, tmp_path / "identity", progress=False)
    (tmp_path / "examples").mkdir()
    for value in ("red", "blue"):
        (tmp_path / "examples" / value).mkdir()
    for image in world_images.glob("*.png"):
        (tmp_path / "examples" / ("red" if int(image.stem[:3]) % 2 else "blue") / image.name).symlink_to(image)
    ranking = rank(clip, aligner, world_images, [builtin_property("colour"), builtin_property("shape")],
                   [load_examples(tmp_path / "examples")], clip.encode_text, k={"colour": 2},
                   aligner_path=tmp_path / "identity.safetensors")
    ranking = Ranking.load(ranking.save(tmp_path / "ranking.json"))
    assert [p.name for p in ranking.properties] == ["colour", "shape", "examples"]
    assert ranking.get("colour").k == 2 and ranking.get("shape").k == 3  # override, then the default
    assert ranking.get("shape").templates == list(builtin_property("shape").templates)  # what text queries will use
    assert ranking.get("examples").templates == []
    for prop in ranking.properties:  # the untrained CLIP's bias is 0 for every image: constant, not ranked
        assert prop.constant == ["bias"] and sorted(prop.components + ["bias"]) == sorted(aligner.component_names)
    assert ranking.probe_images == 24 and ranking.clip_name == MODEL_NAME
    described = describe_heads(clip, aligner, sorted(world_images.glob("*.png")), clip.encode_text,
                               read_text_bank()[:50], ["*.resblocks.3.attn.*"], count=3)
    heads = [name for name in aligner.component_names if name.startswith("visual.transformer.resblocks.3.attn.h")]
    assert [head.head for head in described.heads] == heads and len(heads) > 1 and described.images == 24
    for head in described.heads:  # orthogonalised picks: shares of one variance, together at most all of it
        assert len(head.texts) == 3 and all(0 <= pick.share <= 1 for pick in head.texts)
        assert sum(pick.share for pick in head.texts) <= 1 + 1e-9


def test_align_command_reports_the_heldout_cosine(tmp_path: Path, world_images: Path) -> None:
    _tiny_clip()  # registers the fixture architecture with open_clip
    result = CliRunner().invoke(cli, [
        "align", "--model", MODEL_NAME, "--random-init", "--clip", MODEL_NAME, "--images", str(world_images),
        "--out", str(tmp_path / "cli"), "--epochs", "1", "--heldout", "0.25",
    ])
    assert result.exit_code == 0, result.output
    assert "held-out cosine" in result.output and (tmp_path / "cli.json").is_file()
    assert f"wrote {tmp_path / 'cli.safetensors'} and {tmp_path / 'cli.json'}" in result.output
    assert "warning: the held-out cosine is measured on only 6 images" in result.stderr
    assert load_aligner(tmp_path / "cli").meta.trained_on == f"folder {world_images.absolute()}"


def test_align_rank_describe_commands_on_a_local_clip(tmp_path: Path, world_images: Path) -> None:
    model, _, _ = build_untrained()
    folder = tmp_path / "clip"
    folder.mkdir()
    safetensors.torch.save_file(model.state_dict(), folder / WEIGHTS_NAME)
    save_config_for_hf(model, folder / CONFIG_NAME, model_config=model_config())
    name, runner = f"local-dir:{folder}", CliRunner()
    aligned = runner.invoke(cli, ["align", "--model", name, "--clip", name, "--images", str(world_images),
                                  "--out", str(tmp_path / "identity")])
    assert aligned.exit_code == 0 and "identity" in aligned.output, aligned.output
    ranked = runner.invoke(cli, ["rank", "--model", name, "--aligner", str(tmp_path / "identity"), "--images",
                                 str(world_images), "--property", "colour", "--property", "size=tiny,huge",
                                 "--k", "colour=2", "--out", str(tmp_path / "ranking.json")])
    assert ranked.exit_code == 0, ranked.output
    assert "never learnt" not in ranked.stderr  # a CLIP that ships no vocabulary knows every word
    ranking = Ranking.load(tmp_path / "ranking.json")
    assert [(p.name, p.k) for p in ranking.properties] == [("colour", 2), ("size", 3)]
    write_vocabulary(folder, "renders of a test world", ["red orange yellow green blue purple pink white tiny"])
    closed = runner.invoke(cli, ["rank", "--model", name, "--aligner", str(tmp_path / "identity"), "--images",
                                 str(world_images), "--property", "colour", "--property", "size=tiny,huge",
                                 "--out", str(tmp_path / "closed.json")])
    assert closed.exit_code == 0, closed.output
    assert "property 'colour' uses words the CLIP never learnt ('black', 'brown', 'grey'" in closed.stderr
    assert "property 'size' uses words the CLIP never learnt ('huge')" in closed.stderr
    assert "photos" not in closed.stderr  # world renders are what it knows
    assert f"* {ranking.top('colour')[0]}" in ranked.output and "constant, not ranked: bias" in ranked.output
    described = runner.invoke(cli, ["describe", "--model", name, "--aligner", str(tmp_path / "identity"),
                                    "--images", str(world_images), "--heads", "*.resblocks.2.attn.h1",
                                    "--count", "2", "--json"])
    assert described.exit_code == 0, described.output
    [head] = json.loads(described.stdout)["heads"]  # progress went to stderr
    assert head["head"] == "visual.transformer.resblocks.2.attn.h1"
    assert len(head["texts"]) == 2 and set(head["texts"][0]) == {"text", "share"}


def _parity_examples(folder: Path, world_images: Path, pattern: str = "*.png") -> None:
    """``folder/{even,odd}/``: the world images labelled by the parity of their index."""
    for image in world_images.glob(pattern):
        value = "odd" if int(image.stem[:3]) % 2 else "even"
        (folder / value).mkdir(parents=True, exist_ok=True)
        (folder / value / image.name).symlink_to(image)


def test_example_properties_need_no_aligner(tmp_path: Path, world_images: Path) -> None:
    clip = _tiny_clip()
    _parity_examples(tmp_path / "parity", world_images)
    ranking = rank(clip, None, examples=[load_examples(tmp_path / "parity")])
    [prop] = ranking.properties
    assert ranking.aligner is None and prop.source == "examples" and prop.values == ["even", "odd"]
    names, _ = component_contributions(clip, sorted(world_images.glob("*.png"))[:1])
    assert all(-1.0 < share <= 1.0 for share in prop.own_scores)  # ω²: negative when below chance
    assert sorted(prop.components + prop.constant) == sorted(names) and prop.constant == ["bias"]
    with pytest.raises(PropertyError, match="need an aligner"):
        rank(clip, None, world_images, [builtin_property("colour")])


def test_rank_k_auto_on_examples_prints_and_keeps_its_curve(tmp_path: Path) -> None:
    """64 renders labelled by colour (and, through links to the same files, by parity), ranked
    in the model's own space: the files are decomposed once for both; k is chosen on the 16
    held out (2 per colour), the curve printed with the scores' legend, and saved."""
    _tiny_clip()  # registers the fixture architecture with open_clip
    for item in get_split("train").items(200):
        folder = tmp_path / "hue" / item.colour
        folder.mkdir(parents=True, exist_ok=True)
        if len(list(folder.iterdir())) < 8:
            render_image(item, size=48).save(folder / f"{item.index:03d}.png")
    _parity_examples(tmp_path / "parity", tmp_path / "hue", "*/*.png")
    result = CliRunner().invoke(cli, ["rank", "--model", MODEL_NAME, "--random-init", "--examples",
                                      str(tmp_path / "hue"), "--examples", str(tmp_path / "parity"), "--k", "auto",
                                      "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    ranking = Ranking.load(tmp_path / "r.json")
    prop = ranking.get("hue")
    assert ranking.example_images == 64 and ranking.get("parity").k_curve.held_out_images == 16
    assert prop.k_curve is not None and prop.k == prop.k_curve.best_k() and prop.k_curve.held_out_images == 16
    assert len(prop.k_curve.ks) == len(prop.k_curve.own) == len(prop.k_curve.leakage) == min(16, len(prop.components))
    assert f"{MODEL_NAME}: 64 example images, no aligner" in result.output and "ω²" in result.output
    assert "k chosen on 16 held-out images" in result.output and f"hue (examples, k={prop.k} auto)" in result.output


def test_rank_k_auto_on_text_properties_holds_out_a_quarter_of_the_probe_set(
    tmp_path: Path, world_images: Path,
) -> None:
    clip = _tiny_clip()
    for item in get_split("train").items(48):
        render_image(item, size=48).save(tmp_path / f"{item.index:03d}.png")
    identity = align(clip, clip, tmp_path, tmp_path / "identity", progress=False)
    properties = [builtin_property("colour"), Property("size", ("tiny", "huge"))]
    ranking = rank(clip, identity, tmp_path, properties, encode_text=clip.encode_text, k={"colour": "auto"})
    colour, size = ranking.properties
    assert colour.k_curve.held_out_images == 12 and colour.k == colour.k_curve.best_k()
    assert size.k_curve is None and size.k == 3
    with pytest.raises(CompsearchError, match="only 6 of its probe images can be held out"):
        rank(clip, identity, world_images, properties, encode_text=clip.encode_text, k="auto")


def test_probe_sets_skip_an_unreadable_image_with_a_warning(
    tmp_path: Path, world_images: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    for image in world_images.glob("*.png"):
        (probe / image.name).symlink_to(image)
    first = sorted(world_images.glob("*.png"))[0]
    (probe / "zz_truncated.png").write_bytes(first.read_bytes()[:100])
    model, clip = _tiny_clip(), _tiny_clip()
    aligner = align(model, clip, probe, tmp_path / "a", first_block="all", settings=FAST, progress=False)
    assert aligner.meta.train_images + aligner.meta.heldout_images == 24
    assert "skipped 1 of 25 images" in caplog.text and "zz_truncated.png is truncated" in caplog.text
    caplog.clear()
    identity = align(clip, clip, probe, tmp_path / "identity", progress=False)
    ranking = rank(clip, identity, probe, [builtin_property("colour")], encode_text=clip.encode_text)
    assert ranking.probe_images == 24 and "skipped 1 of 25 images" in caplog.text
    described = describe_heads(clip, identity, probe, clip.encode_text, read_text_bank()[:20], ["*.resblocks.3.attn.h0"])
    assert len(described.heads) == 1


def test_a_broken_example_is_dropped_with_its_label(tmp_path: Path, world_images: Path) -> None:
    clip = _tiny_clip()
    _parity_examples(tmp_path / "parity", world_images)
    clean = rank(clip, None, examples=[load_examples(tmp_path / "parity")]).properties[0]
    (tmp_path / "parity" / "even" / "000_broken.png").write_text("not pixels")  # listed first among evens
    with_broken = rank(clip, None, examples=[load_examples(tmp_path / "parity")]).properties[0]
    # The same images with the same labels: had the labels shifted past the broken file, the shares would move.
    assert with_broken.components == clean.components
    assert with_broken.own_scores == pytest.approx(clean.own_scores, abs=1e-6)


def test_a_parquet_probe_set_reads_like_its_folder(tmp_path: Path, world_images: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    clip = _tiny_clip()
    # Paths relative to the table's own folder, as the world splits write them.
    paths = [os.path.relpath(image, tmp_path) for image in sorted(world_images.glob("*.png"))]
    pq.write_table(pa.table({"path": paths, "note": ["x"] * len(paths)}), tmp_path / "probe.parquet")
    from_folder = component_contributions(clip, world_images)[1]
    from_table = component_contributions(clip, tmp_path / "probe.parquet")[1]
    torch.testing.assert_close(from_table, from_folder)


def test_rank_warns_about_what_it_would_silently_accept(
    tmp_path: Path, world_images: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    clip = _tiny_clip()
    aligner = align(clip, clip, world_images, tmp_path / "identity", progress=False)
    caplog.clear()
    rank(clip, aligner, world_images, [builtin_property("colour"), Property("gloss", ("shiny",))],
         encode_text=clip.encode_text, k={"colour": 2, "shape": 2})
    messages = caplog.messages
    assert any("--k names shape, which is not being ranked (ranking: colour, gloss)" in m for m in messages)
    assert any("'gloss' has a single description" in m for m in messages)
    assert any("scored on only 24 images" in m for m in messages)


def test_an_aligner_is_checked_against_the_images_it_is_used_on(
    world_images: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """An aligner that maps each component to itself is exact for a CLIP in its own space
    (cosine 1); claimed to fit its training images better than that, it is warned about."""
    clip = _tiny_clip()
    names, contributions = component_contributions(clip, sorted(world_images.glob("*.png"))[:1])
    dim = contributions.shape[-1]
    meta = AlignerMeta(model_name=clip.name, model_weights_id=clip.weights_id, clip_name=clip.name,
                       clip_weights_id=clip.weights_id, component_names=names, model_dim=dim, clip_dim=dim,
                       first_block=None, heldout_cosine=0.95, trained_on="folder /renders")
    aligner = Aligner(meta, torch.eye(dim).repeat(len(names), 1, 1), torch.zeros(dim))
    paths = sorted(world_images.glob("*.png"))
    caplog.clear()
    assert check_aligner_fit(clip, aligner, clip, paths) == pytest.approx(1.0, abs=1e-5)
    assert not caplog.records  # fits as well as on its own images: no warning
    meta.heldout_cosine = 1.2  # a fit no other images reach
    check_aligner_fit(clip, aligner, clip, paths)
    assert re.search(r"cosine 1.00 .* against 1.20 .* \(folder /renders\)", caplog.text)
    assert check_aligner_fit(clip, Aligner.identity(replace(meta, identity=True)), clip, paths) is None
