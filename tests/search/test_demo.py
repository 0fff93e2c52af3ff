"""compsearch demo: the whole flow on the world, measured against the world's labels, cached."""
from __future__ import annotations

import json

from click.testing import CliRunner

from compsearch.indexer.store import IndexStore
from compsearch.search.cli import cli
from compsearch.search.demo import DESCRIPTIONS, run_demo


def test_demo_runs_the_whole_flow_and_a_rerun_reuses_it(fixture_clip, tmp_path) -> None:
    report = run_demo(tmp_path, count=60, progress=False, say=lambda _: None, model_choice="fixture")
    assert {(f.property, f.kind) for f in report.figures} == {(p, k) for p in DESCRIPTIONS for k in ("text", "image")}
    colour_text = next(f for f in report.figures if (f.property, f.kind) == ("colour", "text"))
    assert colour_text.precision_property_index > 3 / 8  # 3× chance (60 images: ~7 per colour cap P@10 at ~0.7)
    images = [f for f in report.figures if f.kind == "image"]
    # What a property index is for: results agree less on what the query did not ask for.
    assert sum(f.leakage_property_index for f in images) < sum(f.leakage_full_index for f in images)
    assert all(0 <= f.precision_full_index <= 1 for f in report.figures)
    assert report.examples and all(len(example["results"]) == 5 for example in report.examples)
    manifest = IndexStore(report.index_dir).read_manifest()
    assert set(manifest.indexes) == {"full", *DESCRIPTIONS} and manifest.counts.images == 60

    result = CliRunner().invoke(cli, ["demo", "--model", "fixture", "--images", "60", "--workdir", str(tmp_path),
                                      "--json"])
    assert result.exit_code == 0, result.output
    rerun = json.loads(result.stdout)
    assert IndexStore(report.index_dir).read_manifest().runs == manifest.runs  # nothing rebuilt
    assert [f["precision_property_index"] for f in rerun["figures"]] == [f.precision_property_index
                                                                          for f in report.figures]
