"""The click-free reader of `compsearch search`'s arguments against click itself: where it
answers, it gives the command exactly click's parameters; where it is unsure, it declines."""
from __future__ import annotations

import pytest

from compsearch.search.commands.fast_argv import parse
from compsearch.search.commands.search import search_command
from compsearch.search.commands.search_options import SEARCH_OPTIONS

URL = "http://127.0.0.1:8000"
READ = [
    [URL],
    [URL, "--id", "42", "-p", "colour"],
    [URL, "--text", "dark red", "--property=colour", "-k", "100", "--offset", "200", "--format", "jsonl"],
    ["--text", "red", URL, "--json"],  # the positional after options
    [URL, "--text", "--json"],  # click takes the next word as the value, dashes or not
    [URL, "--weight", "-0.5", "--text", "x", "--and", "shape:text:circle", "--and", "0.5*colour:id:3",
     "--not", "pattern:text:plain", "--where", "width > 10 and folder == 'a b'", "--threshold", "0.2"],
    [URL, "--image", "a.jpg", "--copy-to", "out", "--device", "cpu", "--token", "t", "--weights", "w.safetensors"],
    [URL, "--text", "a", "--text", "b", "--text="],  # the last one counts, as in click
    ["-", "--id", "1"],
]
DECLINED = [
    [URL, "--help"], [URL, "-h"], [URL, "-k5"], [URL, "-pcolour"], [URL, "--json=1"], [URL, "-k"],
    [URL, "-k", "five"], [URL, "--threshold", "x"], [URL, "--format", "yaml"], [URL, "--nonsense"],
    [URL, "index.dir"], ["--id", "3"], [URL, "--", "--id"],
]


def click_parameters(arguments: list[str]) -> dict:
    return search_command.make_context("search", list(arguments)).params


@pytest.mark.parametrize("arguments", READ, ids=" ".join)
def test_it_reads_what_click_reads(arguments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPSEARCH_TOKEN", raising=False)
    assert parse(SEARCH_OPTIONS, arguments, "index_dir") == click_parameters(arguments)


@pytest.mark.parametrize("token", ["from-env", ""])
def test_the_token_comes_from_the_environment_as_in_click(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPSEARCH_TOKEN", token)
    for arguments in ([URL, "--id", "1"], [URL, "--id", "1", "--token", "given"]):
        parsed = parse(SEARCH_OPTIONS, arguments, "index_dir")
        assert parsed == click_parameters(arguments) and parsed["token"] == ("given" if "--token" in arguments
                                                                             else token or None)


@pytest.mark.parametrize("arguments", DECLINED, ids=" ".join)
def test_it_declines_what_it_is_unsure_of(arguments: list[str]) -> None:
    assert parse(SEARCH_OPTIONS, arguments, "index_dir") is None
