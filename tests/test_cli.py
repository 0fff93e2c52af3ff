"""The console script: start-up (every --help, fast and without torch), the ``decompose``,
``sample`` and ``world fixture-clip`` commands end to end, and their errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import PIL.Image
import pytest
import torch

from compsearch.search.cli import COMMANDS, cli
from compsearch.search.launch import main
from tests.mapping.test_models import (  # noqa: F401  (fixtures, and the tiny CLIP writer)
    _no_weights_dir,
    _save_tiny_clip_folder,
    offline_empty_cache,
)

MODEL = ["--model", "deit_tiny_patch16_224", "--random-init"]
ROOT = Path(__file__).resolve().parents[1]
# The console script's entry point in a fresh interpreter, saying at exit whether torch was imported.
FRESH = ("import atexit, sys; sys.argv[0] = 'compsearch'; "
         "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr)); "
         "from compsearch.search.launch import main; main()")


def run_fresh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FRESH, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def _every_command() -> list[tuple[str, ...]]:
    """The group, every registered command and every subcommand of a registered group."""
    found: list[tuple[str, ...]] = [()]
    for name in COMMANDS:
        found.append((name,))
        command = cli.get_command(click.Context(cli), name)
        if isinstance(command, click.Group):
            found += [(name, sub) for sub in command.commands]
    return found


@pytest.mark.parametrize("command", _every_command(), ids=lambda command: " ".join(command) or "compsearch")
def test_every_help_works_without_importing_torch(command: tuple[str, ...]) -> None:
    """The registry imports commands lazily, so a broken import shows only when a command is
    named; and --help must stay instant, which rules out importing torch."""
    result = run_fresh(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: compsearch {' '.join(command)}".rstrip())
    assert "torch imported: False" in result.stderr


def test_the_group_help_lists_the_registry_in_order_of_use() -> None:
    result = run_fresh("--help")
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == list(COMMANDS) and "in the order they are used" in result.stdout


def test_a_missing_file_is_reported_before_any_model_library_loads() -> None:
    result = run_fresh("decompose", "/nonexistent/photo.jpg", "--model", "deit_tiny_patch16_224")
    assert result.returncode == 2 and result.stdout == ""
    [message, torch_line] = result.stderr.splitlines()
    assert message.startswith("error: ") and "does not exist" in message and "compsearch decompose --help" in message
    assert torch_line == "torch imported: False"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Runs the console script's entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["compsearch", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def photos(tmp_path: Path) -> list[str]:
    paths = []
    for colour in ("red", "navy"):
        path = tmp_path / f"{colour}.png"
        image = PIL.Image.new("RGB", (96, 64), colour)
        image.paste("white", (20, 10, 50, 40))
        image.save(path)
        paths.append(str(path))
    return paths


def test_decompose_json_is_exact_and_sorted(monkeypatch, capsys, photos) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "decompose", *photos, *MODEL,
                           "--first-block", "all", "--top", "100", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["first_block"] == "blocks.0" and report["weights_id"] == "random-init"
    assert report["num_components"] == 2 + 12 * (3 + 1)  # init, bias; 3 heads + MLP per block
    assert [image["image"] for image in report["images"]] == photos
    for image in report["images"]:
        assert image["relative_error"] < 1e-5
        norms = [component["norm"] for component in image["top"]]
        assert len(norms) == report["num_components"] and norms == sorted(norms, reverse=True)
        assert sum(component["share"] for component in image["top"]) == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_decompose_on_a_named_or_resolved_device(monkeypatch, capsys, photos, device: str) -> None:
    """``auto`` is resolved (a GPU when torch sees one, else the CPU) before the model moves."""
    code, out, err = run_cli(monkeypatch, capsys, "decompose", photos[0], *MODEL, "--device", device, "--json")
    assert code == 0, err
    assert json.loads(out)["images"][0]["relative_error"] < 1e-5


def test_decompose_table_with_tokens(monkeypatch, capsys, photos) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "decompose", photos[0], *MODEL,
                           "--first-block", "-2", "--tokens", "--top", "3")
    assert code == 0
    assert "decomposed from blocks.10 into 10 components" in out
    assert re.search(r"relative reconstruction error \d\.\d\de-\d\d", out)
    rows = [line for line in out.splitlines() if re.match(r"  (init|bias|blocks\.)", line)]
    assert len(rows) == 3
    for row in rows:  # heads list the tokens they read; other components do not
        assert (".attn.h" in row) == bool(re.search(r"tokens: (r\d+c\d+|prefix0) -?\d\.\d\d", row))
    assert "images/s" in out


def test_decompose_token_shares_sum_to_one_over_all_tokens(monkeypatch, capsys, photos) -> None:
    monkeypatch.setattr("compsearch.mapping.decompose.report.TOKENS_SHOWN", 10_000)
    code, out, _ = run_cli(monkeypatch, capsys, "decompose", photos[0], *MODEL, "--tokens", "--json")
    heads = [c for c in json.loads(out)["images"][0]["top"] if c["tokens"] is not None]
    assert code == 0 and heads
    for head in heads:
        assert len(head["tokens"]) == 197  # CLS + 14×14 patches
        assert sum(t["share"] for t in head["tokens"]) == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp, photos: ["decompose", str(tmp / "missing.jpg"), *MODEL], "does not exist"),
        (lambda tmp, photos: ["decompose", _corrupt(tmp), *MODEL], "broken.jpg is truncated"),
        (lambda tmp, photos: ["decompose", photos[0], "--model", "deit_tinyy_patch16_224"], "did you mean"),
        (lambda tmp, photos: ["decompose", photos[0], *MODEL, "--first-block", "blocks.12"],
         "not a decomposable block"),
        (lambda tmp, photos: ["decompose", photos[0], "--model", "deit_tiny_patch16_224"], "--weights PATH"),
        (lambda tmp, photos: ["sample", "--weights", str(tmp / "none.safetensors")], "does not exist"),
        (lambda tmp, photos: ["index", str(tmp), "--out", str(tmp / "out"), "--model", "deit_tiny_patch16_224",
                              "--weights", str(tmp / "none.safetensors")], "does not exist"),
        (lambda tmp, photos: ["index", str(tmp), "--out", str(tmp / "out"), *MODEL, "--address", "auto"],
         "add --backend ray"),
        (lambda tmp, photos: ["decompose", photos[0], *MODEL, "--device", "nonsense"], "unknown device 'nonsense'"),
        pytest.param(lambda tmp, photos: ["decompose", photos[0], *MODEL, "--device", "cuda"], "torch sees no GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ],
    ids=["missing-image", "corrupt-image", "unknown-model", "bad-block", "missing-weights", "sample-bad-weights",
         "index-bad-weights", "index-address-without-ray", "unknown-device", "no-gpu"],
)
def test_user_errors_are_one_line_and_exit_2(
    monkeypatch, capsys, tmp_path, photos, offline_empty_cache, make_args, message  # noqa: F811
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, *make_args(tmp_path, photos))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def _corrupt(folder: Path) -> str:
    path = folder / "broken.jpg"
    PIL.Image.new("RGB", (256, 256), "green").save(folder / "whole.jpg")
    path.write_bytes((folder / "whole.jpg").read_bytes()[:400])
    return str(path)


def test_sample_falls_back_to_random_weights_offline(monkeypatch, capsys, offline_empty_cache) -> None:  # noqa: F811
    code, out, _ = run_cli(monkeypatch, capsys, "sample")
    assert code == 0
    assert "random initialisation" in out and "weights random-init" in out
    assert "Next: compsearch decompose YOUR.jpg --model deit_tiny_patch16_224 --random-init --tokens" in out
    assert re.search(r"exact: Σ components = z to \d\.\de-0[6-9]", out)


def test_sample_with_real_weights_sees_classes(monkeypatch, capsys, deit_tiny_weights, tmp_path) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "sample", "--weights", str(deit_tiny_weights),
                           "--save-image", str(tmp_path / "sample.png"))
    assert code == 0 and "random" not in out
    assert "ImageNet classes DeiT-tiny sees:" in out and "exact:" in out
    assert f"--weights {deit_tiny_weights} --tokens" in out  # the next command finds the same weights
    assert PIL.Image.open(tmp_path / "sample.png").size == (224, 224)


@pytest.mark.slow  # a fresh interpreter importing torch: 10–20 s on a busy 2-core machine
def test_console_script_reports_errors_in_one_line(tmp_path) -> None:
    script = Path(sys.executable).with_name("compsearch")
    if not script.exists():
        pytest.skip("the compsearch console script is not installed in this environment")
    result = subprocess.run(
        [str(script), "decompose", str(tmp_path / "missing.jpg"), "--model", "deit_tiny_patch16_224"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "does not exist" in result.stderr and result.stderr.count("\n") == 1


def test_decompose_clip_from_a_local_folder(monkeypatch, capsys, tmp_path, photos) -> None:
    _save_tiny_clip_folder(tmp_path / "clip")
    code, out, _ = run_cli(monkeypatch, capsys, "decompose", *photos, "--model", f"local-dir:{tmp_path / 'clip'}",
                           "--first-block", "all", "--tokens", "--json")
    report = json.loads(out)
    assert code == 0 and report["first_block"] == "visual.transformer.resblocks.0"
    for image in report["images"]:
        assert image["relative_error"] < 1e-5 and image["output_norm"] == pytest.approx(1)  # CLIP's z is unit norm


def test_fixture_clip_prints_only_its_name_on_stdout(monkeypatch, capsys, fixture_clip) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "world", "fixture-clip")
    assert code == 0 and out == f"local-dir:{fixture_clip}\n"  # usable as --clip "$(compsearch world fixture-clip)"
    assert "zero-shot accuracy" in err
    code, out, _ = run_cli(monkeypatch, capsys, "world", "fixture-clip", "--json")
    report = json.loads(out)
    assert code == 0 and report["model"] == f"local-dir:{fixture_clip}" and set(report["test_accuracy"]) >= {"colour"}


def test_errors_name_the_option_the_user_typed(
    monkeypatch, capsys, tmp_path, photos, offline_empty_cache  # noqa: F811
) -> None:
    _save_tiny_clip_folder(tmp_path / "clip")
    code, _, err = run_cli(monkeypatch, capsys, "align", "--model", f"local-dir:{tmp_path / 'clip'}",
                           "--clip", "ViT-B-16:laion2b_s34b_b88k", "--images", str(tmp_path), "--out", str(tmp_path / "a"))
    assert code == 2 and "--clip-weights PATH" in err and " --weights" not in err and "--random-init" in err
    code, _, err = run_cli(monkeypatch, capsys, "decompose", photos[0], "--model", "my-world-clip")
    assert code == 2 and "unknown model 'my-world-clip'" in err and "local-dir:" in err and "world fixture-clip" in err


def test_ctrl_c_during_a_query_of_a_server_is_one_line(monkeypatch, capsys) -> None:
    from compsearch.search import launch

    def interrupted(arguments: list[str]) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "_answered_remotely", interrupted)
    code, out, err = run_cli(monkeypatch, capsys, "search", "http://127.0.0.1:9", "--id", "1")
    assert code == 1 and err == "aborted\n" and out == ""
