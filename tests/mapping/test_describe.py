"""TextSpan head descriptions on planted directions, text banks and head selection."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compsearch.mapping.describe import read_text_bank, select_heads, text_span
from compsearch.mapping.errors import CompsearchError


def test_text_span_picks_the_planted_directions_in_order() -> None:
    bank = F.normalize(torch.randn(40, 16), dim=-1)
    images = 500
    outputs = (3.0 * torch.randn(images, 1) * bank[7] + 1.0 * torch.randn(images, 1) * bank[21]
               + 0.05 * torch.randn(images, 16) + 4.0)  # the constant offset is not variation
    picks = text_span(outputs, bank, 3)
    assert [pick.index for pick in picks[:2]] == [7, 21]
    assert picks[0].share > 0.8 and picks[0].variance > picks[1].variance > picks[2].variance
    assert sum(pick.share for pick in picks) <= 1.0 + 1e-9


def test_text_span_removes_each_pick_from_the_bank() -> None:
    bank = torch.eye(4)[[0, 0, 1, 2, 3]]  # a duplicate of the first text
    picks = text_span(torch.randn(100, 4) * torch.tensor([5.0, 1.0, 1.0, 1.0]), bank, 5)
    chosen = [pick.index for pick in picks]
    assert chosen[0] in (0, 1) and len(chosen) == 4 and not {0, 1} <= set(chosen)


def test_text_banks_read_yaml_and_plain_text(tmp_path: Path) -> None:
    shipped = read_text_bank()
    assert len(shipped) >= 200 and len(set(shipped)) == len(shipped)
    (tmp_path / "bank.txt").write_text("a red thing\n\n  a striped thing \n")
    assert read_text_bank(tmp_path / "bank.txt") == ["a red thing", "a striped thing"]
    (tmp_path / "bank.yaml").write_text("- a dog\n- a cat\n")
    assert read_text_bank(tmp_path / "bank.yaml") == ["a dog", "a cat"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(CompsearchError, match="no descriptions"):
        read_text_bank(tmp_path / "empty.txt")


def test_select_heads_by_name_and_glob() -> None:
    names = ["init", "blocks.10.attn.h0", "blocks.10.attn.h1", "blocks.10.mlp", "blocks.11.attn.h0", "bias"]
    assert select_heads(names) == ["blocks.10.attn.h0", "blocks.10.attn.h1", "blocks.11.attn.h0"]
    assert select_heads(names, ["blocks.10.attn.*"]) == ["blocks.10.attn.h0", "blocks.10.attn.h1"]
    assert select_heads(names, ["blocks.11.attn.h0", "blocks.10.mlp"]) == ["blocks.11.attn.h0"]
    with pytest.raises(CompsearchError, match="no attention head matches") as error:
        select_heads(names, ["blocks.10.mlp"])
    assert "not MLPs" in error.value.problem  # and the user learns which heads there are:
    assert "blocks.10.attn.h0–h1, blocks.11.attn.h0" in error.value.hint and "'blocks.11.attn.*'" in error.value.hint
